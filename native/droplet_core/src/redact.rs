//! Keeping every piece of the token ([`PIECE`] bytes in a row) out of what a
//! server could make echo it. One pass per text: a window is looked up only
//! when all its bytes occur in the token.

use std::collections::HashSet;

use serde_json::Value;

use crate::autoscale::Pool;
use crate::model::{AddressType, Droplet, Status};

/// No run of this many bytes of the token survives.
pub const PIECE: usize = 12;

/// Shorter would garble words ("connec[REDACTED]ion"); real tokens are 71.
const MIN_SECRET_LEN: usize = 4;

const REDACTED: &str = "[REDACTED]";

/// The token, or a header holding it: shown by `Debug` as `[REDACTED]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(REDACTED)
    }
}

pub struct Redactor<'a> {
    width: usize,
    pieces: HashSet<&'a [u8]>,
    in_secret: [bool; 256],
}

impl<'a> Redactor<'a> {
    pub fn new(secret: &'a str) -> Redactor<'a> {
        let bytes = secret.as_bytes();
        let width = bytes.len().min(PIECE);
        let mut in_secret = [false; 256];
        let mut pieces = HashSet::new();
        if bytes.len() >= MIN_SECRET_LEN {
            bytes.iter().for_each(|&b| in_secret[usize::from(b)] = true);
            pieces.extend(bytes.windows(width));
        }
        Redactor { width, pieces, in_secret }
    }

    /// The byte ranges of `text` covered by pieces, merged, in order.
    fn spans(&self, text: &[u8]) -> Vec<(usize, usize)> {
        let mut spans: Vec<(usize, usize)> = Vec::new();
        let mut run = 0;
        for (i, &b) in text.iter().enumerate() {
            run = if self.in_secret[usize::from(b)] { run + 1 } else { 0 };
            let start = (i + 1).saturating_sub(self.width);
            if run < self.width || !self.pieces.contains(&text[start..=i]) {
                continue;
            }
            match spans.last_mut() {
                Some((_, end)) if *end >= start => *end = i + 1,
                _ => spans.push((start, i + 1)),
            }
        }
        spans
    }

    pub fn finds(&self, text: &str) -> bool {
        !self.spans(text.as_bytes()).is_empty()
    }

    /// Every run of pieces in `text` replaced by `[REDACTED]`.
    pub fn redact(&self, text: &mut String) {
        let spans = self.spans(text.as_bytes());
        if spans.is_empty() {
            return;
        }
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for (start, end) in spans {
            // A piece of a secret that is not ASCII may split a character.
            let start = (0..=start).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
            let end = (end..=text.len()).find(|&i| text.is_char_boundary(i)).unwrap_or(text.len());
            out.push_str(text.get(at..start.max(at)).unwrap_or_default());
            out.push_str(REDACTED);
            at = at.max(end);
        }
        out.push_str(text.get(at..).unwrap_or_default());
        *text = out;
    }

    /// Every string of `droplet` that comes from the API.
    pub fn droplet(&self, droplet: &mut Droplet) {
        self.redact(&mut droplet.name);
        droplet.tags.iter_mut().flatten().for_each(|t| self.redact(t));
        droplet.region.iter_mut().for_each(|r| self.redact(r));
        droplet.vpc_uuid.iter_mut().for_each(|v| self.redact(v));
        if let Status::Other(s) = &mut droplet.status {
            self.redact(s);
        }
        let networks = &mut droplet.networks;
        for address in networks.v4.iter_mut().chain(networks.v6.iter_mut()) {
            self.redact(&mut address.ip_address);
            if let AddressType::Other(kind) = &mut address.kind {
                self.redact(kind);
            }
        }
        droplet.fields.iter_mut().for_each(|v| self.value(v));
    }

    /// A pass-through value: a string, or a list of them.
    fn value(&self, value: &mut Value) {
        match value {
            Value::String(s) => self.redact(s),
            Value::Array(list) => list.iter_mut().for_each(|v| self.value(v)),
            _ => {}
        }
    }

    /// Every string of `pool` that comes from the API (or may: its id).
    pub fn pool(&self, pool: &mut Pool) {
        self.redact(&mut pool.id);
        self.redact(&mut pool.name);
        pool.tags.iter_mut().for_each(|t| self.redact(t));
        for member in &mut pool.members {
            self.redact(&mut member.status);
            member.health_status.iter_mut().for_each(|h| self.redact(h));
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const TOKEN: &str =
        "dop_v1_deadbeefcafebabefacade0123456789abcdef0123456789abcdef0123456789";

    /// Every piece of `secret` (each run of `PIECE` bytes) absent from `shown`.
    pub(crate) fn assert_no_piece(secret: &str, shown: &str) {
        for piece in secret.as_bytes().windows(PIECE.min(secret.len())) {
            let piece = std::str::from_utf8(piece).unwrap_or_default();
            assert!(!shown.contains(piece), "{piece:?} of the token in {shown}");
        }
    }

    fn redacted(secret: &str, text: &str) -> String {
        let mut text = text.to_string();
        Redactor::new(secret).redact(&mut text);
        text
    }

    #[test]
    fn every_piece_of_the_token_is_redacted_wherever_it_is() {
        let half = TOKEN.len() / 2;
        let mut texts = vec![
            TOKEN.to_string(),
            format!("node-{TOKEN}.example"),
            format!("{}:read", &TOKEN[7..29]),
            format!("{}é{}", &TOKEN[..half], &TOKEN[half..]),
            format!("{}{}", &TOKEN[half..], &TOKEN[..half]),
            TOKEN.chars().rev().collect(),
        ];
        for start in 0..=TOKEN.len() - PIECE {
            texts.push(format!("ü{}ü", &TOKEN[start..start + PIECE]));
            texts.push(TOKEN[start..].to_string());
            texts.push(TOKEN[..start + PIECE].to_string());
        }
        for text in texts {
            let out = redacted(TOKEN, &text);
            assert_no_piece(TOKEN, &out);
            assert!(out.contains(REDACTED) || !text.contains(&TOKEN[..PIECE]), "{out}");
        }
        assert_eq!(redacted(TOKEN, &format!("a {} b", &TOKEN[7..29])), "a [REDACTED] b");
        // Two pieces apart stay two redactions; overlapping ones are one.
        assert_eq!(
            redacted(TOKEN, &format!("{}-{}", &TOKEN[..12], &TOKEN[40..52])),
            "[REDACTED]-[REDACTED]"
        );
        assert_eq!(redacted(TOKEN, &TOKEN[3..30]), "[REDACTED]");
    }

    #[test]
    fn text_without_a_piece_is_left_alone() {
        let shorter = &TOKEN[10..21];
        for text in ["nyc3", "10.0.0.1", "web-1.example.com", shorter, "", "é"] {
            assert_eq!(redacted(TOKEN, text), text);
        }
        assert!(!Redactor::new(TOKEN).finds(shorter));
        assert!(Redactor::new(TOKEN).finds(&TOKEN[1..13]));
    }

    #[test]
    fn a_short_secret_is_one_piece_and_a_tiny_one_none() {
        assert_eq!(redacted("sekret", "a sekret b"), "a [REDACTED] b");
        assert_eq!(redacted("sekret", "a sekre b"), "a sekre b");
        assert_eq!(redacted("abcd", "xabcdx"), "x[REDACTED]x");
        assert_eq!(redacted("vpc", "vpc:read"), "vpc:read");
        assert_eq!(redacted("", "anything"), "anything");
        assert!(!Redactor::new("vpc").finds("vpc"));
    }

    #[test]
    fn a_secret_that_is_not_ascii_is_cut_on_character_boundaries() {
        let secret = "ééééééééé";
        let out = redacted(secret, &format!("x{}y", &secret[2..14]));
        assert_eq!(out, "x[REDACTED]y");
    }
}
