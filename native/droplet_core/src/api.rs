//! Listing every droplet: the first page, then the rest concurrently, with
//! the token kept on the API's own origin throughout.
//!
//! The HTTP exchange itself sits behind [`Transport`] so pagination,
//! redirects and status handling are tested without sockets.

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::cancel::Cancel;
use crate::error::Error;
use crate::links::{
    first_page_url, normalize_api_url, page_number, resolve_location, same_origin,
    with_query_param, Filter,
};
use crate::model::{parse_page, Droplet, Page};
use crate::pool;
use crate::ratelimit::{RateLimit, Tracker};

pub const DEFAULT_PER_PAGE: u32 = 200;
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_millis(5_000);
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_millis(15_000);
pub const DEFAULT_DEADLINE: Duration = Duration::from_millis(60_000);
pub const DEFAULT_MAX_BODY_BYTES: u64 = 16 * 1024 * 1024;
pub const DEFAULT_MAX_PAGES: u32 = 1_000;
pub const DEFAULT_PAGE_CONCURRENCY: usize = 4;
/// Redirects followed for one page before giving up.
pub const MAX_REDIRECTS: u32 = 3;

/// TLS handshakes and JSON parsing want more than a probe, far less than 2 MiB.
const PAGE_STACK: usize = 512 * 1024;

/// What to list and how. Build with [`ListRequest::new`], then adjust the
/// public fields; `api_url` is kept normalized by `new`.
#[derive(Clone)]
pub struct ListRequest {
    pub api_url: String,
    pub token: String,
    pub filter: Filter,
    pub per_page: u32,
    pub ca_file: Option<String>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub deadline: Duration,
    pub max_body_bytes: u64,
    pub max_pages: u32,
    pub page_concurrency: usize,
    /// Once set, no further request is sent (page or redirect) and the
    /// listing ends with `Err(Cancelled)`.
    pub cancel: Cancel,
}

impl ListRequest {
    pub fn new(api_url: &str, token: &str) -> Result<ListRequest, Error> {
        Ok(ListRequest {
            api_url: normalize_api_url(api_url)?,
            token: validate_token(token)?,
            filter: Filter::None,
            per_page: DEFAULT_PER_PAGE,
            ca_file: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            deadline: DEFAULT_DEADLINE,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_pages: DEFAULT_MAX_PAGES,
            page_concurrency: DEFAULT_PAGE_CONCURRENCY,
            cancel: Cancel::new(),
        })
    }
}

/// Non-empty and made of characters an HTTP header can carry: anything else
/// would fail later inside the HTTP library, with a less useful message.
fn validate_token(token: &str) -> Result<String, Error> {
    if token.is_empty() {
        return Err(Error::InvalidRequest("token must not be empty".into()));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::InvalidRequest(
            "token must be printable ASCII without spaces".into(),
        ));
    }
    Ok(token.to_string())
}

impl fmt::Debug for ListRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListRequest")
            .field("api_url", &self.api_url)
            .field("token", &"[REDACTED]")
            .field("filter", &self.filter)
            .field("per_page", &self.per_page)
            .field("ca_file", &self.ca_file)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("deadline", &self.deadline)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_pages", &self.max_pages)
            .field("page_concurrency", &self.page_concurrency)
            .field("cancel", &self.cancel)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// Unique by id, in the order the API listed them.
    pub droplets: Vec<Droplet>,
    /// `meta.total` of the first page.
    pub total: u64,
}

/// Counters kept by the caller, so they survive a failed or panicking
/// listing and can still be reported.
#[derive(Debug, Default)]
pub struct Stats {
    requests: AtomicU64,
    rate: Mutex<Tracker>,
}

impl Stats {
    /// Responses received, whatever their status (redirects included).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn rate_limit(&self) -> Option<RateLimit> {
        self.rate.lock().unwrap_or_else(|e| e.into_inner()).best()
    }

    fn record(&self, rate_limit: Option<RateLimit>) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if let Some(rl) = rate_limit {
            self.rate
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .observe(rl);
        }
    }
}

/// One HTTP response. `body` is read only for 2xx; its own error (truncated,
/// too large) is kept apart so the exchange still counts as a request.
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

/// Lists every droplet over HTTP(S). Errors never carry the token.
pub fn list_droplets(req: &ListRequest, stats: &Stats) -> Result<Listing, Error> {
    let started = Instant::now();
    crate::http::UreqTransport::new(req)
        .and_then(|t| list_with(&t, req, stats, started))
        .map_err(|e| e.redact(&req.token))
}

/// [`list_droplets`] over any transport; `started` anchors the deadline.
pub fn list_with<T: Transport>(
    transport: &T,
    req: &ListRequest,
    stats: &Stats,
    started: Instant,
) -> Result<Listing, Error> {
    let lister = Lister {
        transport,
        req,
        stats,
        deadline: started + req.deadline,
    };
    lister.run()
}

struct Lister<'a, T> {
    transport: &'a T,
    req: &'a ListRequest,
    stats: &'a Stats,
    deadline: Instant,
}

impl<T: Transport> Lister<'_, T> {
    fn run(&self) -> Result<Listing, Error> {
        let first_url = first_page_url(&self.req.api_url, self.req.per_page, &self.req.filter);
        let first = self.fetch_page(&first_url)?;
        let total = first.meta.total;
        if first.droplets.is_empty() && total > 0 {
            return Err(Error::Inconsistent(format!(
                "page 1 lists no droplets but meta.total is {total}"
            )));
        }
        let Some(next) = first.links.pages.next.clone() else {
            return Ok(finish(vec![first], total));
        };
        let mut visited: HashSet<String> = HashSet::from([first_url]);
        let mut pages = vec![first];

        if let Some(last) = pages.first().and_then(page_count) {
            if last > u64::from(self.req.max_pages) {
                return Err(Error::TooManyPages(self.req.max_pages));
            }
            let urls: Vec<String> = (2..=last)
                .map(|p| with_query_param(&next, "page", &p.to_string()))
                .collect();
            visited.extend(urls.iter().cloned());
            pages.extend(self.fetch_concurrently(&urls)?);
        }

        // The API grew while we listed, or gave no page count: walk the rest.
        while let Some(next) = pages.last().and_then(|p| p.links.pages.next.clone()) {
            if !visited.insert(next.clone()) {
                return Err(Error::PaginationLoop);
            }
            if pages.len() >= self.req.max_pages as usize {
                return Err(Error::TooManyPages(self.req.max_pages));
            }
            pages.push(self.fetch_page(&next)?);
        }
        Ok(finish(pages, total))
    }

    /// Pages `urls` at most `page_concurrency` at a time (this thread
    /// included), all or nothing. On a failure no new page is started, and
    /// the earliest page's error wins so the outcome does not depend on
    /// thread timing more than necessary. A cancel is such a failure: the
    /// next page each thread takes ends at once with `Err(Cancelled)`.
    fn fetch_concurrently(&self, urls: &[String]) -> Result<Vec<Page>, Error> {
        let stop = AtomicBool::new(false);
        let results = pool::run_indexed(
            "droplet_page",
            urls.len(),
            self.req.page_concurrency,
            PAGE_STACK,
            || stop.load(Ordering::Relaxed),
            |i| {
                let result = match urls.get(i) {
                    Some(url) => self.fetch_page(url),
                    None => Err(Error::Inconsistent("page index out of range".into())),
                };
                if result.is_err() {
                    stop.store(true, Ordering::Relaxed);
                }
                result
            },
        );
        let mut pages = Vec::with_capacity(urls.len());
        for slot in results {
            match slot {
                Some(Ok(page)) => pages.push(page),
                Some(Err(e)) => return Err(e),
                None => {}
            }
        }
        if pages.len() != urls.len() {
            return Err(Error::Inconsistent("a page was skipped".into()));
        }
        Ok(pages)
    }

    /// One page, following same-origin redirects, its links checked.
    fn fetch_page(&self, url: &str) -> Result<Page, Error> {
        let mut current = url.to_string();
        let mut hops = 0;
        loop {
            if self.req.cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
            let timeout = self.time_left()?.min(self.req.request_timeout);
            let exchange = self.transport.get(&current, timeout)?;
            self.stats.record(exchange.rate_limit);
            match exchange.status {
                200..=299 => {
                    let page = parse_page(&exchange.body?)?;
                    self.check_links(&page)?;
                    return Ok(page);
                }
                status @ 300..=399 => {
                    let Some(location) = exchange.location else {
                        return Err(Error::HttpStatus(status));
                    };
                    let target = resolve_location(&current, &location)
                        .filter(|t| same_origin(&self.req.api_url, t))
                        .ok_or(Error::ForeignRedirect)?;
                    if hops >= MAX_REDIRECTS {
                        return Err(Error::TooManyRedirects);
                    }
                    hops += 1;
                    current = target;
                }
                401 => return Err(Error::Unauthorized),
                403 => return Err(Error::Forbidden),
                429 => {
                    let wait = exchange
                        .rate_limit
                        .and_then(|r| r.retry_seconds(unix_now()));
                    return Err(Error::RateLimited(wait));
                }
                status => return Err(Error::HttpStatus(status)),
            }
        }
    }

    /// Pagination links are followed with the token attached, so they must
    /// stay on the API's origin; checked before anything is sent to them.
    fn check_links(&self, page: &Page) -> Result<(), Error> {
        let links = &page.links.pages;
        for link in [&links.next, &links.last].into_iter().flatten() {
            if !same_origin(&self.req.api_url, link) {
                return Err(Error::ForeignLink);
            }
        }
        Ok(())
    }

    fn time_left(&self) -> Result<Duration, Error> {
        self.deadline
            .checked_duration_since(Instant::now())
            .filter(|left| !left.is_zero())
            .ok_or(Error::Timeout)
    }
}

/// How many pages there are, as far as page 1 tells: the `last` link's page
/// number, else `meta.total` over the first page's size.
fn page_count(first: &Page) -> Option<u64> {
    if let Some(last) = first.links.pages.last.as_deref().and_then(page_number) {
        return Some(last);
    }
    let per_page = first.droplets.len() as u64;
    (per_page > 0).then(|| first.meta.total.div_ceil(per_page))
}

/// Concatenates pages, keeping the first droplet of each id: a droplet
/// created mid-listing shifts the pages and shows up twice.
fn finish(pages: Vec<Page>, total: u64) -> Listing {
    let mut seen = HashSet::new();
    let droplets = pages
        .into_iter()
        .flat_map(|p| p.droplets)
        .filter(|d| seen.insert(d.id))
        .collect();
    Listing { droplets, total }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests;
