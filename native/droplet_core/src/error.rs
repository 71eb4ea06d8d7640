//! The one error type of the core. Each variant is one Elixir reason term, so
//! the NIF's encoding is a plain `match` with no information lost or invented;
//! the Elixir side words them (`LibclusterDroplet.Error.format/1`).

use std::any::Any;

use crate::bounds::Bound;
use crate::redact::Redactor;

/// Details end up in logs: cut, so a server cannot flood a log line.
pub const MAX_DETAIL_BYTES: usize = 240;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    Unauthorized,
    /// The scope the 403 named, only ever a word of scope shape.
    Forbidden(Option<String>),
    RateLimited(Option<u64>),
    HttpStatus(u16),
    Timeout,
    Transport(String),
    Tls(String),
    InvalidJson(String),
    UnexpectedShape(String),
    Inconsistent(String),
    ForeignLink,
    ForeignRedirect,
    TooManyRedirects,
    PaginationLoop,
    TooManyPages(u32),
    TooManyDroplets(u64),
    /// A bound of [`crate::bounds::Limits`] passed, and its limit.
    ListingTooLarge(Bound, u64),
    BodyTooLarge(u64),
    CaFile(String),
    InvalidRequest(String),
    NoPrivateIpv6,
    /// A GPU listing's tags, checked here, were not listed (no `tag:read`).
    TagsUnknown,
    /// The autoscale pool asked for: no pool of that name, or a 404 for its id.
    PoolNotFound,
    Spawn(String),
    Panic(String),
    Busy,
    Cancelled,
}

impl Error {
    /// The detail of the variants that carry one.
    fn detail_mut(&mut self) -> Option<&mut String> {
        match self {
            Error::Transport(d)
            | Error::Tls(d)
            | Error::InvalidJson(d)
            | Error::UnexpectedShape(d)
            | Error::Inconsistent(d)
            | Error::CaFile(d)
            | Error::InvalidRequest(d)
            | Error::Spawn(d)
            | Error::Panic(d) => Some(d),
            _ => None,
        }
    }

    /// Fit to leave the client: every piece of `secret` scrubbed from the
    /// detail, then the detail cut (a cut first could split a piece past
    /// recognition). Details never quote a body, but a URL or a TLS message
    /// could still carry the token.
    pub fn sanitize(mut self, secret: &str) -> Error {
        let redactor = Redactor::new(secret);
        // Dropped, not redacted into something that is no scope.
        if let Error::Forbidden(Some(scope)) = &self {
            if redactor.finds(scope) {
                return Error::Forbidden(None);
            }
        }
        if let Some(detail) = self.detail_mut() {
            redactor.redact(detail);
            if detail.len() > MAX_DETAIL_BYTES {
                *detail = short(std::mem::take(detail));
            }
        }
        self
    }
}

/// Cuts `text` to at most `MAX_DETAIL_BYTES`, on a character boundary.
pub fn short(text: impl Into<String>) -> String {
    let mut text = text.into();
    if text.len() > MAX_DETAIL_BYTES {
        let end = (0..=MAX_DETAIL_BYTES - 3).rev().find(|&i| text.is_char_boundary(i));
        text.truncate(end.unwrap_or(0));
        text.push_str("...");
    }
    text
}

/// The message of a caught panic (`&str` or `String` in practice).
pub fn panic_detail(payload: &(dyn Any + Send)) -> String {
    let text = payload.downcast_ref::<&str>().copied();
    let text = text.or_else(|| payload.downcast_ref::<String>().map(String::as_str));
    text.map_or_else(|| "panic with a non-string payload".into(), short)
}

#[cfg(test)]
impl Error {
    pub(crate) fn detail(&self) -> Option<String> {
        self.clone().detail_mut().cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_keeps_short_text_and_cuts_on_char_boundary() {
        assert_eq!(short("abc"), "abc");
        let long = "é".repeat(500);
        let cut = short(long);
        assert!(cut.len() <= MAX_DETAIL_BYTES);
        assert!(cut.ends_with("..."));
    }

    #[test]
    fn sanitize_scrubs_the_secret_from_details_only() {
        let e = Error::InvalidJson("saw sekret-token here".into()).sanitize("sekret-token");
        assert_eq!(e, Error::InvalidJson("saw [REDACTED] here".into()));
        assert_eq!(Error::Timeout.sanitize("x"), Error::Timeout);
        assert_eq!(Error::Tls("fine".into()).sanitize(""), Error::Tls("fine".into()));
        assert_eq!(
            Error::Transport("connection refused".into()).sanitize("t"),
            Error::Transport("connection refused".into())
        );
        assert_eq!(
            Error::Transport("echo: abcd".into()).sanitize("abcd"),
            Error::Transport("echo: [REDACTED]".into())
        );
    }

    #[test]
    fn every_detail_variant_is_sanitized() {
        let secret = "sekret-token";
        let text = || format!("a {secret} b");
        for e in [
            Error::Transport(text()),
            Error::Tls(text()),
            Error::InvalidJson(text()),
            Error::UnexpectedShape(text()),
            Error::Inconsistent(text()),
            Error::CaFile(text()),
            Error::InvalidRequest(text()),
            Error::Spawn(text()),
            Error::Panic(text()),
        ] {
            let clean = e.clone().sanitize(secret);
            assert_eq!(clean.detail().as_deref(), Some("a [REDACTED] b"), "{e:?}");
        }
    }

    #[test]
    fn sanitize_redacts_before_it_cuts() {
        // The secret straddles the cut: cutting first would leave its head.
        let secret = "dop_v1_0123456789abcdef0123456789abcdef";
        let detail = format!("{}{secret}{}", "x".repeat(220), "y".repeat(100));
        let clean = Error::UnexpectedShape(detail).sanitize(secret);
        let shown = clean.detail().unwrap_or_default();
        assert!(shown.len() <= MAX_DETAIL_BYTES, "{}", shown.len());
        assert!(!shown.contains(&secret[..8]), "{shown}");
        assert!(shown.ends_with("..."), "{shown}");
    }

    #[test]
    fn a_scope_holding_the_secret_is_dropped() {
        let named = Error::Forbidden(Some("vpc:read".into()));
        assert_eq!(named.clone().sanitize("dop_v1_sekret"), named);
        assert_eq!(
            Error::Forbidden(Some("sekret:read".into())).sanitize("sekret"),
            Error::Forbidden(None)
        );
        // Too short to be a token: "vpc" is left alone, as in details.
        assert_eq!(named.clone().sanitize("vpc"), named);
    }

    #[test]
    fn no_piece_of_the_secret_survives_in_a_scope_or_a_detail() {
        use crate::redact::tests::{assert_no_piece, TOKEN};
        // The 403 of the issue: 22 characters of the token as a scope.
        let scope = Error::Forbidden(Some("deadbeefcafebabefacade:read".into()));
        assert_eq!(scope.sanitize(TOKEN), Error::Forbidden(None));
        for start in 0..=TOKEN.len() - 12 {
            let piece = &TOKEN[start..start + 12];
            let scope = Error::Forbidden(Some(format!("{piece}:read")));
            assert_eq!(scope.sanitize(TOKEN), Error::Forbidden(None), "{piece}");
            let detail = Error::Tls(format!("certificate for {piece}.example"));
            assert_no_piece(TOKEN, &format!("{:?}", detail.sanitize(TOKEN)));
        }
        // Eleven characters in a row are no piece.
        let eleven = Error::Forbidden(Some(format!("{}:read", &TOKEN[7..18])));
        assert_eq!(eleven.clone().sanitize(TOKEN), eleven);
    }

    #[test]
    fn panic_detail_reads_str_and_string_payloads() {
        let p = std::panic::catch_unwind(|| panic!("boom")).unwrap_err();
        assert_eq!(panic_detail(p.as_ref()), "boom");
        let p = std::panic::catch_unwind(|| panic!("{}", 42)).unwrap_err();
        assert_eq!(panic_detail(p.as_ref()), "42");
        let p = std::panic::catch_unwind(|| std::panic::panic_any(7u8)).unwrap_err();
        assert_eq!(panic_detail(p.as_ref()), "panic with a non-string payload");
    }
}
