//! The one error type of the core. Each variant is one Elixir reason term, so
//! the NIF's encoding is a plain `match` with no information lost or invented;
//! the Elixir side words them (`LibclusterDroplet.Error.format/1`).

use std::any::Any;

use crate::bounds::Bound;
use crate::redact::Redactor;

/// Details end up in logs and in terms shown to operators: long ones are cut
/// so a hostile server cannot flood a log line through an error message.
pub const MAX_DETAIL_BYTES: usize = 240;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    Unauthorized,
    /// The scope the 403 named, when it named one (see [`crate::scope`]):
    /// only ever a word of scope shape, never other text of the server's.
    Forbidden(Option<String>),
    /// Seconds to wait before retrying, when the server said so.
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
    /// The cap on droplets per listing.
    TooManyDroplets(u64),
    /// A bound of [`crate::bounds::Limits`] passed, and its limit.
    ListingTooLarge(Bound, u64),
    BodyTooLarge(u64),
    CaFile(String),
    InvalidRequest(String),
    NoPrivateIpv6,
    /// Tags had to be checked here (a GPU listing with `tag_name`) on a
    /// droplet listed without its `tags`: the token lacks `tag:read`.
    TagsUnknown,
    Spawn(String),
    Panic(String),
    /// Every call slot of the NIF's thread budget is taken.
    Busy,
    /// The caller cancelled the call, or went away.
    Cancelled,
}

/// The variants that carry a detail string, listed once: `detail` and
/// `detail_mut` expand it, so a new variant cannot be redacted by one and
/// missed by the other.
macro_rules! detail_of {
    ($error:expr) => {
        match $error {
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
    };
}

impl Error {
    /// The detail text of the variants that carry one.
    pub fn detail(&self) -> Option<&str> {
        detail_of!(self).map(String::as_str)
    }

    fn detail_mut(&mut self) -> Option<&mut String> {
        detail_of!(self)
    }

    /// Makes an error fit to leave the client: every piece of `secret`
    /// (see [`crate::redact`]) scrubbed from the detail, then the detail cut
    /// to `MAX_DETAIL_BYTES`. In that order: a cut first could split a
    /// piece and leave part of it that no longer matches. Every listing
    /// error goes through here, once, as it leaves the client; details are
    /// built uncut until then.
    ///
    /// Defence in depth: details are fixed text or text we chose to keep
    /// (never the body, which a server could make echo the token), but a
    /// URL or a TLS message could still carry it.
    pub fn sanitize(mut self, secret: &str) -> Error {
        let redactor = Redactor::new(secret);
        // A scope is a short word of fixed shape; one that holds a piece of
        // the secret is dropped rather than redacted into something that
        // is no scope.
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
        let mut end = MAX_DETAIL_BYTES - 3;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("...");
    }
    text
}

/// The message of a caught panic: panics carry `&str` or `String` payloads
/// in practice, anything else is reported generically.
pub fn panic_detail(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        short(*s)
    } else if let Some(s) = payload.downcast_ref::<String>() {
        short(s.as_str())
    } else {
        "panic with a non-string payload".to_string()
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
            assert_eq!(clean.detail(), Some("a [REDACTED] b"), "{e:?}");
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
