//! The one error type of the core. Each variant is one Elixir reason term, so
//! the NIF's encoding is a plain `match` with no information lost or invented.

use std::any::Any;
use std::fmt;

/// Details end up in logs and in terms shown to operators: long ones are cut
/// so a hostile server cannot flood a log line through an error message.
const MAX_DETAIL_BYTES: usize = 240;

const MIN_REDACTED_LEN: usize = 4;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    Unauthorized,
    Forbidden,
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
    BodyTooLarge(u64),
    CaFile(String),
    InvalidRequest(String),
    NoPrivateIpv6,
    Spawn(String),
    Panic(String),
    /// Every call slot of the NIF's thread budget is taken.
    Busy,
    /// The caller cancelled the call, or went away.
    Cancelled,
}

impl Error {
    /// The detail text of the variants that carry one.
    pub fn detail(&self) -> Option<&str> {
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

    /// Defence in depth: no code path is meant to put the token in a detail,
    /// but a server echoing it back inside a body that fails to parse could.
    /// Every error leaving the client goes through here. Secrets shorter
    /// than `MIN_REDACTED_LEN` are left alone: they would garble ordinary
    /// words ("connec[REDACTED]ion") while protecting nothing, and real
    /// DigitalOcean tokens are 71 characters long.
    pub fn redact(self, secret: &str) -> Error {
        if secret.len() < MIN_REDACTED_LEN || !self.detail().is_some_and(|d| d.contains(secret)) {
            return self;
        }
        let scrub = |d: String| d.replace(secret, "[REDACTED]");
        match self {
            Error::Transport(d) => Error::Transport(scrub(d)),
            Error::Tls(d) => Error::Tls(scrub(d)),
            Error::InvalidJson(d) => Error::InvalidJson(scrub(d)),
            Error::UnexpectedShape(d) => Error::UnexpectedShape(scrub(d)),
            Error::Inconsistent(d) => Error::Inconsistent(scrub(d)),
            Error::CaFile(d) => Error::CaFile(scrub(d)),
            Error::InvalidRequest(d) => Error::InvalidRequest(scrub(d)),
            Error::Spawn(d) => Error::Spawn(scrub(d)),
            Error::Panic(d) => Error::Panic(scrub(d)),
            other => other,
        }
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

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Unauthorized => f.write_str("the API rejected the token (401)"),
            Error::Forbidden => f.write_str("the token lacks a required scope (403)"),
            Error::RateLimited(Some(s)) => write!(f, "rate limited, retry in {s} s"),
            Error::RateLimited(None) => f.write_str("rate limited"),
            Error::HttpStatus(code) => write!(f, "unexpected HTTP status {code}"),
            Error::Timeout => f.write_str("timed out"),
            Error::Transport(d) => write!(f, "transport error: {d}"),
            Error::Tls(d) => write!(f, "TLS error: {d}"),
            Error::InvalidJson(d) => write!(f, "invalid JSON: {d}"),
            Error::UnexpectedShape(d) => write!(f, "unexpected JSON shape: {d}"),
            Error::Inconsistent(d) => write!(f, "inconsistent listing: {d}"),
            Error::ForeignLink => f.write_str("a pagination link points to another origin"),
            Error::ForeignRedirect => f.write_str("a redirect points to another origin"),
            Error::TooManyRedirects => f.write_str("too many redirects"),
            Error::PaginationLoop => f.write_str("pagination links loop"),
            Error::TooManyPages(max) => write!(f, "more than {max} pages"),
            Error::BodyTooLarge(limit) => write!(f, "response body over {limit} bytes"),
            Error::CaFile(d) => write!(f, "CA file: {d}"),
            Error::InvalidRequest(d) => write!(f, "invalid request: {d}"),
            Error::NoPrivateIpv6 => f.write_str("DigitalOcean has no private IPv6 addresses"),
            Error::Spawn(d) => write!(f, "could not spawn a thread: {d}"),
            Error::Panic(d) => write!(f, "panic: {d}"),
            Error::Busy => write!(
                f,
                "more than {} NIF calls in flight",
                crate::budget::MAX_CALLS
            ),
            Error::Cancelled => f.write_str("cancelled"),
        }
    }
}

impl std::error::Error for Error {}

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
    fn redact_scrubs_the_secret_from_details_only() {
        let e = Error::InvalidJson("saw sekret-token here".into()).redact("sekret-token");
        assert_eq!(e, Error::InvalidJson("saw [REDACTED] here".into()));
        assert_eq!(Error::Timeout.redact("x"), Error::Timeout);
        assert_eq!(
            Error::Tls("fine".into()).redact(""),
            Error::Tls("fine".into())
        );
        assert_eq!(
            Error::Transport("connection refused".into()).redact("t"),
            Error::Transport("connection refused".into())
        );
        assert_eq!(
            Error::Transport("echo: abcd".into()).redact("abcd"),
            Error::Transport("echo: [REDACTED]".into())
        );
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

    #[test]
    fn display_is_readable() {
        assert_eq!(
            Error::HttpStatus(502).to_string(),
            "unexpected HTTP status 502"
        );
        assert_eq!(
            Error::RateLimited(Some(3)).to_string(),
            "rate limited, retry in 3 s"
        );
    }
}
