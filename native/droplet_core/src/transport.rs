//! The seam between the listing logic ([`api`](crate::api)) and HTTP (`http`).

use std::time::Duration;

use crate::error::Error;
use crate::ratelimit::RateLimit;

/// One response; `body` read for 2xx and a 403 (capped), its own error kept
/// apart so that the exchange still counts as a request.
#[derive(Debug)]
pub struct Exchange {
    pub status: u16,
    pub location: Option<String>,
    pub rate_limit: Option<RateLimit>,
    pub body: Result<Vec<u8>, Error>,
}

pub trait Transport: Sync {
    /// One authenticated GET within `timeout`; `Err` when no response came.
    fn get(&self, url: &str, timeout: Duration) -> Result<Exchange, Error>;
}
