//! Listing every droplet: the first page, then the rest concurrently, with
//! the token kept on the API's own origin throughout, and the listing's size
//! bounded before and while it is fetched.
//!
//! The HTTP exchange itself sits behind [`Transport`] so pagination,
//! redirects and status handling are tested without sockets.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::Uri;

use crate::bounds::{Limits, Tally};
use crate::cancel::Cancel;
use crate::error::Error;
use crate::filters::{queries, Gpus, ListFilter, Query};
use crate::http::UreqTransport;
use crate::links::{
    first_page_url, normalize_api_url, page_number, resolve_location, same_origin, same_origin_url,
    with_query_param,
};
use crate::model::{parse_page, Droplet, Page};
use crate::pool::{self, Helpers};
use crate::ratelimit::{RateLimit, Tracker};
use crate::redact::{Redactor, Secret};
use crate::scope::missing_scope;
use crate::transport::Transport;

/// Redirects followed for one page before giving up.
pub const MAX_REDIRECTS: u32 = 3;
/// A listing whose `meta.total` changes under it is started over once.
const LISTING_ATTEMPTS: u32 = 2;

/// TLS handshakes and JSON parsing want more than a probe, far less than 2 MiB.
const PAGE_STACK: usize = 512 * 1024;

/// What to list and how. Build with [`ListRequest::new`], then adjust the
/// public fields; `api_url` is kept normalized by `new`.
#[derive(Debug, Clone)]
pub struct ListRequest {
    pub api_url: String,
    pub token: Secret,
    /// Tags or a name; several tags, and GPU droplets, take a listing each
    /// (see [`crate::filters`]).
    pub filter: ListFilter,
    pub gpus: Gpus,
    pub per_page: u32,
    pub ca_file: Option<String>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// The whole listing, CA file reading included. One too large to be
    /// added to the current time (`Duration::MAX`) means no deadline.
    pub deadline: Duration,
    pub max_body_bytes: u64,
    pub max_pages: u32,
    /// More droplets than this fail the listing with `TooManyDroplets`.
    pub max_droplets: u64,
    /// What the droplets may hold, and the listing keep, in bytes.
    pub limits: Limits,
    pub page_concurrency: usize,
    /// How long an idle connection is kept for the next listing.
    pub keep_alive: Duration,
    /// Once set, no further request is sent (page or redirect) and the
    /// listing ends with `Err(Cancelled)`.
    pub cancel: Cancel,
}

impl ListRequest {
    pub fn new(api_url: &str, token: &str) -> Result<ListRequest, Error> {
        let ms = Duration::from_millis;
        Ok(ListRequest {
            api_url: normalize_api_url(api_url)?,
            token: Secret(validate_token(token)?),
            filter: ListFilter::All,
            gpus: Gpus::Exclude,
            per_page: 200,
            ca_file: None,
            connect_timeout: ms(5_000),
            request_timeout: ms(15_000),
            deadline: ms(60_000),
            // Eight times a full page of 200 droplets (about 500 KB): what
            // one response may bring; times `page_concurrency`, what the
            // responses in flight hold at once.
            max_body_bytes: 4 * 1024 * 1024,
            max_pages: 1_000,
            // Fifty full pages, far above DigitalOcean's default droplet
            // limit per account: a larger cluster raises it on purpose.
            max_droplets: 10_000,
            limits: Limits::default(),
            page_concurrency: 4,
            // An hour: the longest a strategy waits between polls with its
            // defaults (a rate-limit reset is at most an hour away), so no
            // poll pays DNS, TCP and TLS again for a connection it could
            // have kept.
            keep_alive: ms(3_600_000),
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
        return Err(Error::InvalidRequest("token must be printable ASCII without spaces".into()));
    }
    Ok(token.to_string())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// Unique by id, in the order the API listed them (listing after
    /// listing, when there are several).
    pub droplets: Vec<Droplet>,
    /// `meta.total` of the first page; with several listings, their sum.
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
            self.rate.lock().unwrap_or_else(|e| e.into_inner()).observe(rl);
        }
    }
}

/// Lists every droplet over HTTP(S), pages 2.. `page_concurrency` at a
/// time. Errors never carry the token.
pub fn list_droplets(req: &ListRequest, stats: &Stats) -> Result<Listing, Error> {
    list_droplets_within(req, stats, &req.page_concurrency.saturating_sub(1))
}

/// [`list_droplets`] with page helper threads from `helpers` (a call's
/// admission to the thread budget).
pub fn list_droplets_within(
    req: &ListRequest,
    stats: &Stats,
    helpers: &dyn Helpers,
) -> Result<Listing, Error> {
    let started = Instant::now();
    let deadline = deadline_after(started, req.deadline);
    let result = UreqTransport::new(req, deadline).and_then(|transport| {
        Lister {
            transport: &transport,
            req,
            stats,
            deadline,
            tally: Tally::new(req.limits),
            helpers,
        }
        .run_all()
    });
    sanitized(req, result)
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
        deadline: deadline_after(started, req.deadline),
        tally: Tally::new(req.limits),
        helpers: &req.page_concurrency.saturating_sub(1),
    };
    sanitized(req, lister.run_all())
}

/// The way out of the client: every error scrubbed of the token, then cut
/// to length (see [`Error::sanitize`]), and every value of the droplets
/// that came from the API scrubbed of it too (a droplet named after the
/// token becomes an unusable name, never the token).
fn sanitized(req: &ListRequest, result: Result<Listing, Error>) -> Result<Listing, Error> {
    let redactor = Redactor::new(&req.token.0);
    let mut listing = result.map_err(|e| e.sanitize(&req.token.0))?;
    listing.droplets.iter_mut().for_each(|d| redactor.droplet(d));
    Ok(listing)
}

/// `None`, no deadline, when `budget` is too large to be represented: only
/// direct users of this crate can ask for that (the NIF caps it at an hour),
/// and `Duration::MAX` can only mean "no limit".
fn deadline_after(started: Instant, budget: Duration) -> Option<Instant> {
    started.checked_add(budget)
}

/// A page as the listing uses it: its links checked to be on the API's
/// origin, and parsed.
struct Fetched {
    droplets: Vec<Droplet>,
    total: u64,
    next: Option<Uri>,
    /// The page number of the `last` link.
    last_page: Option<u64>,
}

/// Why an attempt at the listing stopped: an error, or `meta.total`
/// changing under it, which is worth one more attempt.
enum Halt {
    Failed(Error),
    TotalChanged { first: u64, now: u64 },
}

impl From<Error> for Halt {
    fn from(e: Error) -> Halt {
        Halt::Failed(e)
    }
}

struct Lister<'a, T> {
    transport: &'a T,
    req: &'a ListRequest,
    stats: &'a Stats,
    deadline: Option<Instant>,
    /// What every page of every listing keeps, against `req.limits`.
    tally: Tally,
    helpers: &'a dyn Helpers,
}

impl<T: Transport> Lister<'_, T> {
    /// Every listing the filters need (one, unless several tags or GPU
    /// droplets are asked for), one after the other, all or nothing: the
    /// first that fails fails the whole. Their droplets are merged, each id
    /// once (a droplet carrying two of the tags is listed twice), and the
    /// merged count held to `max_droplets` too. The deadline and the
    /// request count cover them all.
    fn run_all(&self) -> Result<Listing, Error> {
        let mut seen = HashSet::new();
        let mut droplets = Vec::new();
        let mut total: u64 = 0;
        for query in queries(&self.req.filter, self.req.gpus)? {
            let listing = self.run(&query)?;
            total = total.saturating_add(listing.total);
            for droplet in listing.droplets {
                if query.keeps(&droplet)? && seen.insert(droplet.id) {
                    droplets.push(droplet);
                }
            }
            if droplets.len() as u64 > self.req.max_droplets {
                return Err(Error::TooManyDroplets(self.req.max_droplets));
            }
        }
        Ok(Listing { droplets, total })
    }

    /// One listing: every page of `query`.
    ///
    /// Offset pagination shifts under deletions: a droplet deleted while
    /// the pages are fetched moves another one from a page not yet fetched
    /// to one already fetched, which the listing then misses, and a missed
    /// droplet is a node disconnected. Every page carries `meta.total`, so a
    /// change shows; the listing is then started over once, and fails if
    /// it changes again.
    fn run(&self, query: &Query) -> Result<Listing, Error> {
        let mut attempt = 1;
        let kept_before = self.tally.kept();
        loop {
            match self.attempt(query) {
                Ok(listing) => return Ok(listing),
                Err(Halt::Failed(e)) => return Err(e),
                Err(Halt::TotalChanged { first, now }) if attempt >= LISTING_ATTEMPTS => {
                    return Err(Error::Inconsistent(format!(
                        "meta.total changed from {first} to {now} during the listing, \
                         {attempt} times in a row"
                    )));
                }
                Err(Halt::TotalChanged { .. }) => {
                    // The attempt's pages are dropped: what they kept is free.
                    self.tally.reset_to(kept_before);
                    attempt += 1;
                }
            }
        }
    }

    fn attempt(&self, query: &Query) -> Result<Listing, Halt> {
        let first_url =
            first_page_url(&self.req.api_url, self.req.per_page, &query.filter, query.kind);
        let first = self.fetch_page(&first_url)?;
        let total = first.total;
        if first.droplets.is_empty() && total > 0 {
            return Err(Error::Inconsistent(format!(
                "page 1 lists no droplets but meta.total is {total}"
            ))
            .into());
        }
        if total > self.req.max_droplets {
            return Err(Error::TooManyDroplets(self.req.max_droplets).into());
        }
        let counted = AtomicU64::new(first.droplets.len() as u64);
        let Some(next) = first.next.clone() else {
            return Ok(finish(vec![first], total));
        };
        let page_count = page_count(&first);
        let first_len = first.droplets.len() as u64;
        let mut visited: HashSet<String> = HashSet::from([first_url]);
        let mut pages = vec![first];

        if let Some(last) = page_count {
            if last > u64::from(self.req.max_pages) {
                return Err(Error::TooManyPages(self.req.max_pages).into());
            }
            if fewest_droplets(last, first_len) > self.req.max_droplets {
                return Err(Error::TooManyDroplets(self.req.max_droplets).into());
            }
            visited.extend((2..=last).map(|n| page_url(&next, n)));
            pages.extend(self.fetch_concurrently(&next, last, total, &counted)?);
        }

        // The last page still links further, or page 1 gave no page count:
        // walk the rest.
        while let Some(next) = pages.last().and_then(|p| p.next.as_ref()).map(Uri::to_string) {
            if !visited.insert(next.clone()) {
                return Err(Error::PaginationLoop.into());
            }
            if pages.len() >= self.req.max_pages as usize {
                return Err(Error::TooManyPages(self.req.max_pages).into());
            }
            let page = self.fetch_page(&next)?;
            pages.push(self.admit(page, total, &counted)?);
        }
        Ok(finish(pages, total))
    }

    /// Pages 2..=`last` (built from the `next` link), at most
    /// `page_concurrency` at a time, all or nothing. The first failure
    /// stops new pages from starting, and the earliest page's failure wins
    /// so the outcome does not depend on thread timing more than necessary.
    /// A cancel is such a failure: the next page each thread takes ends at
    /// once with `Err(Cancelled)`.
    fn fetch_concurrently(
        &self,
        next: &Uri,
        last: u64,
        total: u64,
        counted: &AtomicU64,
    ) -> Result<Vec<Fetched>, Halt> {
        let count = usize::try_from(last.saturating_sub(1)).unwrap_or(usize::MAX);
        let stop = AtomicBool::new(false);
        let halted: Mutex<Option<(usize, Halt)>> = Mutex::new(None);
        let results = pool::run_indexed(
            "droplet_page",
            count,
            self.helpers,
            PAGE_STACK,
            || stop.load(Ordering::Relaxed),
            |i| {
                let url = page_url(next, i as u64 + 2);
                let page = self
                    .fetch_page(&url)
                    .map_err(Halt::from)
                    .and_then(|page| self.admit(page, total, counted));
                match page {
                    Ok(page) => Some(page),
                    Err(halt) => {
                        let mut slot = halted.lock().unwrap_or_else(|e| e.into_inner());
                        match slot.as_ref() {
                            Some((earliest, _)) if *earliest < i => {}
                            _ => *slot = Some((i, halt)),
                        }
                        stop.store(true, Ordering::Relaxed);
                        None
                    }
                }
            },
        );
        if let Some((_, halt)) = halted.into_inner().unwrap_or_else(|e| e.into_inner()) {
            return Err(halt);
        }
        // `stop` is only ever set along with `halted`: with no halt, every
        // page ran and returned one.
        Ok(results.into_iter().flatten().flatten().collect())
    }

    /// Takes a page after page 1 into the listing: same `meta.total` as page
    /// 1, and the droplets so far within `max_droplets`.
    fn admit(&self, page: Fetched, total: u64, counted: &AtomicU64) -> Result<Fetched, Halt> {
        if page.total != total {
            return Err(Halt::TotalChanged { first: total, now: page.total });
        }
        let len = page.droplets.len() as u64;
        let so_far = counted.fetch_add(len, Ordering::Relaxed).saturating_add(len);
        if so_far > self.req.max_droplets {
            return Err(Error::TooManyDroplets(self.req.max_droplets).into());
        }
        Ok(page)
    }

    /// One page, following same-origin redirects, its links checked.
    fn fetch_page(&self, url: &str) -> Result<Fetched, Error> {
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
                    let max_droplets = usize::try_from(self.req.per_page).unwrap_or(usize::MAX);
                    return self.checked(parse_page(&exchange.body?, max_droplets, &self.tally)?);
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
                403 => {
                    let body = exchange.body.as_deref().unwrap_or_default();
                    return Err(Error::Forbidden(missing_scope(body)));
                }
                429 => {
                    let wait = exchange.rate_limit.and_then(|r| r.retry_seconds(unix_now()));
                    return Err(Error::RateLimited(wait));
                }
                status => return Err(Error::HttpStatus(status)),
            }
        }
    }

    /// Pagination links are followed with the token attached, so they must
    /// stay on the API's origin; checked before anything is sent to them.
    fn checked(&self, page: Page) -> Result<Fetched, Error> {
        let on_origin =
            |link: &str| same_origin_url(&self.req.api_url, link).ok_or(Error::ForeignLink);
        let links = page.links.pages;
        let next = links.next.as_deref().map(on_origin).transpose()?;
        let last = links.last.as_deref().map(on_origin).transpose()?;
        Ok(Fetched {
            droplets: page.droplets,
            total: page.meta.total,
            next,
            last_page: last.and_then(|uri| page_number(&uri.to_string())),
        })
    }

    /// Until the deadline, unbounded without one; `Timeout` once it passed.
    fn time_left(&self) -> Result<Duration, Error> {
        let Some(deadline) = self.deadline else {
            return Ok(Duration::MAX);
        };
        deadline
            .checked_duration_since(Instant::now())
            .filter(|left| !left.is_zero())
            .ok_or(Error::Timeout)
    }
}

/// Page `n` of the listing: the `next` link with its `page` set to `n`.
fn page_url(next: &Uri, n: u64) -> String {
    with_query_param(next, "page", &n.to_string())
}

/// How many pages there are, as far as page 1 tells: the `last` link's page
/// number, else `meta.total` over the first page's size.
fn page_count(first: &Fetched) -> Option<u64> {
    if let Some(last) = first.last_page {
        return Some(last);
    }
    let per_page = first.droplets.len() as u64;
    (per_page > 0).then(|| first.total.div_ceil(per_page))
}

/// The fewest droplets a listing of `pages` pages holds when every page but
/// the last is as full as page 1, as offset pagination fills them, and the
/// last holds at least one.
fn fewest_droplets(pages: u64, first_len: u64) -> u64 {
    if pages <= 1 {
        return first_len;
    }
    (pages - 1).saturating_mul(first_len).saturating_add(1)
}

/// Concatenates pages, keeping the first droplet of each id: pages that
/// overlap (a droplet created mid-listing shifts them) list some twice.
fn finish(pages: Vec<Fetched>, total: u64) -> Listing {
    let mut seen = HashSet::new();
    let droplets =
        pages.into_iter().flat_map(|p| p.droplets).filter(|d| seen.insert(d.id)).collect();
    Listing { droplets, total }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests;
