//! The seam between the listing logic and HTTP: [`api`](crate::api) drives
//! pagination, redirects and status handling over any [`Transport`], so all
//! of it is tested without sockets; `http` implements it with ureq.

use std::time::Duration;

use crate::error::Error;
use crate::ratelimit::RateLimit;

/// One HTTP response. `body` is read for 2xx, and for a 403 up to
/// [`MAX_FORBIDDEN_BODY`](crate::scope::MAX_FORBIDDEN_BODY) bytes (it may
/// name the missing scope); otherwise it is empty. Its own error
/// (truncated, too large) is kept apart so the exchange still counts as a
/// request.
#[derive(Debug)]
pub struct Exchange {
    pub status: u16,
    pub location: Option<String>,
    pub rate_limit: Option<RateLimit>,
    pub body: Result<Vec<u8>, Error>,
}

pub trait Transport: Sync {
    /// One authenticated GET of `url`, completed within `timeout`. `Err` only
    /// when no response arrived.
    fn get(&self, url: &str, timeout: Duration) -> Result<Exchange, Error>;
}
