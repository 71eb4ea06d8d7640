//! Listing every droplet: page 1, then the rest concurrently, the token kept
//! on the API's origin and the size bounded throughout. The HTTP exchange
//! sits behind [`Transport`], so all of this is tested without sockets.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::Uri;
use serde::Deserialize;

use crate::autoscale::{self, Described, Lookup, Member, Pool, PoolRef};
use crate::bounds::{Limits, Tally};
use crate::cancel::Cancel;
use crate::error::Error;
use crate::filters::{queries, Gpus, ListFilter};
use crate::http::UreqTransport;
use crate::links::{
    first_page_url, normalize_api_url, page_number, resolve_location, same_origin_url,
    with_query_param,
};
use crate::model::{parse_bounded, Droplet, Item, Page};
use crate::pool::{self, Helpers};
use crate::ratelimit::{keep_tightest, RateLimit};
use crate::redact::{Redactor, Secret};
use crate::scope::missing_scope;
use crate::transport::Transport;

/// Redirects followed for one page before giving up.
pub const MAX_REDIRECTS: u32 = 3;
/// A listing whose `meta.total` changes under it is started over once.
const LISTING_ATTEMPTS: u32 = 2;

/// TLS handshakes and JSON parsing want more than a probe, far less than 2 MiB.
const PAGE_STACK: usize = 512 * 1024;

/// What to list and how: [`ListRequest::new`], then the public fields.
#[derive(Debug, Clone)]
pub struct ListRequest {
    pub api_url: String,
    pub token: Secret,
    pub filter: ListFilter,
    /// Instead of `filter`: the pool's members and its droplets.
    pub pool: Option<PoolRef>,
    pub gpus: Gpus,
    /// Paths of droplet fields passed through ([`crate::fields`]).
    pub fields: Vec<Vec<String>>,
    pub per_page: u32,
    pub ca_file: Option<String>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// The whole listing, CA file included; `Duration::MAX`: none.
    pub deadline: Duration,
    pub max_body_bytes: u64,
    pub max_pages: u32,
    pub max_droplets: u64,
    pub limits: Limits,
    pub page_concurrency: usize,
    pub keep_alive: Duration,
    /// Once set, no further request is sent: `Err(Cancelled)`.
    pub cancel: Cancel,
}

impl ListRequest {
    pub fn new(api_url: &str, token: &str) -> Result<ListRequest, Error> {
        let ms = Duration::from_millis;
        Ok(ListRequest {
            api_url: normalize_api_url(api_url)?,
            token: Secret(validate_token(token)?),
            filter: ListFilter::All,
            pool: None,
            gpus: Gpus::Exclude,
            fields: Vec::new(),
            per_page: 200,
            ca_file: None,
            connect_timeout: ms(5_000),
            request_timeout: ms(15_000),
            deadline: ms(60_000),
            // Eight times a full page of 200 droplets (about 500 KB).
            max_body_bytes: 4 * 1024 * 1024,
            max_pages: 1_000,
            // Fifty full pages, far above an account's default limit.
            max_droplets: 10_000,
            limits: Limits::default(),
            page_concurrency: 4,
            // The longest wait between polls with the defaults.
            keep_alive: ms(3_600_000),
            cancel: Cancel::new(),
        })
    }
}

/// Non-empty and what a header carries, or ureq fails later, less clearly.
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
    /// Unique by id, in the API's order.
    pub droplets: Vec<Droplet>,
    /// `meta.total` of the first page; with several listings, their sum.
    pub total: u64,
    /// The pass-through fields' names (`size.slug`), as each droplet's values.
    pub fields: Vec<String>,
    pub pool: Option<Pool>,
}

/// Kept by the caller, so they survive a failed or panicking listing.
#[derive(Debug, Default)]
pub struct Stats {
    requests: AtomicU64,
    pool_requests: AtomicU64,
    rate: Mutex<Option<RateLimit>>,
}

impl Stats {
    /// Responses received, whatever their status (redirects included).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Those of them that looked a pool up or listed its members.
    pub fn pool_requests(&self) -> u64 {
        self.pool_requests.load(Ordering::Relaxed)
    }

    pub fn rate_limit(&self) -> Option<RateLimit> {
        *self.rate.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, rate_limit: Option<RateLimit>) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if let Some(rl) = rate_limit {
            keep_tightest(&mut self.rate.lock().unwrap_or_else(|e| e.into_inner()), rl);
        }
    }
}

/// Lists every droplet over HTTP(S), pages 2.. on the helpers granted.
pub fn list_droplets(
    req: &ListRequest,
    stats: &Stats,
    helpers: &dyn Helpers,
) -> Result<Listing, Error> {
    let deadline = deadline_after(Instant::now(), req.deadline);
    let listed = UreqTransport::new(req, deadline).and_then(|transport| {
        let tally = Tally::new(req.limits);
        Lister { transport: &transport, req, stats, deadline, tally, helpers }.run_all()
    });
    sanitized(req, listed)
}

/// [`list_droplets`] over any transport, `page_concurrency` pages at a time.
#[cfg(test)]
pub fn list_with<T: Transport>(
    t: &T,
    req: &ListRequest,
    stats: &Stats,
    started: Instant,
) -> Result<Listing, Error> {
    let (deadline, tally) = (deadline_after(started, req.deadline), Tally::new(req.limits));
    let helpers = &req.page_concurrency.saturating_sub(1);
    sanitized(req, Lister { transport: t, req, stats, deadline, tally, helpers }.run_all())
}

/// The way out of the client: errors and every listed value scrubbed of the
/// token's pieces (a droplet named after it gets an unusable name).
fn sanitized(req: &ListRequest, result: Result<Listing, Error>) -> Result<Listing, Error> {
    let redactor = Redactor::new(&req.token.0);
    let mut listing = result.map_err(|e| e.sanitize(&req.token.0))?;
    listing.droplets.iter_mut().for_each(|d| redactor.droplet(d));
    listing.pool.iter_mut().for_each(|p| redactor.pool(p));
    Ok(listing)
}

/// `None`, no deadline, for a `budget` too large to add (`Duration::MAX`).
fn deadline_after(started: Instant, budget: Duration) -> Option<Instant> {
    started.checked_add(budget)
}

/// A page, its links checked to be on the API's origin.
struct Fetched<I> {
    items: Vec<I>,
    total: u64,
    next: Option<Uri>,
    last_page: Option<u64>,
}

/// Why an attempt stopped: an error, or `meta.total` changing (worth one more).
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
    tally: Tally,
    helpers: &'a dyn Helpers,
}

impl<T: Transport> Lister<'_, T> {
    /// The pool first, if any; then every listing the filters need, all or
    /// nothing, merged by id (a droplet with two of the tags is listed twice).
    fn run_all(&self) -> Result<Listing, Error> {
        let pool = self.req.pool.as_ref().map(|wanted| self.pool(wanted)).transpose();
        self.stats.pool_requests.store(self.stats.requests(), Ordering::Relaxed);
        let pool = pool?;
        let filter = pool.as_ref().map_or_else(|| self.req.filter.clone(), Pool::droplets);
        let mut seen = HashSet::new();
        let mut droplets = Vec::new();
        let mut total: u64 = 0;
        for query in queries(&filter, self.req.gpus)? {
            let url =
                first_page_url(&self.req.api_url, self.req.per_page, &query.filter, query.kind);
            let (listed, listed_total) = self.run::<Droplet>(&url)?;
            total = total.saturating_add(listed_total);
            for droplet in listed {
                if query.keeps(&droplet)? && seen.insert(droplet.id) {
                    droplets.push(droplet);
                }
            }
            if droplets.len() as u64 > self.req.max_droplets {
                return Err(Error::TooManyDroplets(self.req.max_droplets));
            }
        }
        let fields = self.req.fields.iter().map(|path| path.join(".")).collect();
        Ok(Listing { droplets, total, fields, pool })
    }

    /// The pool asked for, unless known, and its members; or `PoolNotFound`.
    fn pool(&self, wanted: &PoolRef) -> Result<Pool, Error> {
        let (api, per_page) = (&self.req.api_url, self.req.per_page);
        let gone = |e| if e == Error::HttpStatus(404) { Error::PoolNotFound } else { e };
        let mut pool = match wanted {
            PoolRef::Known(pool) => pool.clone(),
            PoolRef::Id(id) => {
                let body = self.get(&autoscale::pool_url(api, id)).map_err(gone)?;
                let found = parse_bounded(&body, 1, &self.tally, |de| Lookup::deserialize(de))?;
                found.autoscale_pool.pool(id.clone())
            }
            PoolRef::Name(name) => {
                let (pools, _) =
                    self.run::<Described>(&autoscale::search_url(api, per_page, name))?;
                let found =
                    pools.into_iter().find(|p| p.name == *name).ok_or(Error::PoolNotFound)?;
                let id = found.id.clone();
                found.pool(id)
            }
        };
        let members = autoscale::members_url(api, per_page, &pool.id);
        pool.members = self.run::<Member>(&members).map_err(gone)?.0;
        Ok(pool)
    }

    /// Every item of every page from `first_url`, and page 1's `meta.total`.
    /// An item deleted mid-listing shifts offset pagination, so the listing
    /// would miss another; `meta.total` shows it: the listing starts over.
    fn run<I: Item>(&self, first_url: &str) -> Result<(Vec<I>, u64), Error> {
        let mut attempt = 1;
        let kept_before = self.tally.kept();
        loop {
            match self.attempt(first_url) {
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

    fn attempt<I: Item>(&self, first_url: &str) -> Result<(Vec<I>, u64), Halt> {
        let first = self.fetch_page::<I>(first_url)?;
        let total = first.total;
        if first.items.is_empty() && total > 0 {
            return Err(Error::Inconsistent(format!(
                "page 1 lists no droplets but meta.total is {total}"
            ))
            .into());
        }
        if total > self.req.max_droplets {
            return Err(Error::TooManyDroplets(self.req.max_droplets).into());
        }
        let counted = AtomicU64::new(first.items.len() as u64);
        let Some(next) = first.next.clone() else {
            return Ok(finish(vec![first], total));
        };
        let page_count = page_count(&first);
        let first_len = first.items.len() as u64;
        let mut visited: HashSet<String> = HashSet::from([first_url.to_string()]);
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

        // Links past the last page, or no page count: walk them.
        while let Some(next) = pages.last().and_then(|p| p.next.as_ref()).map(Uri::to_string) {
            if !visited.insert(next.clone()) {
                return Err(Error::PaginationLoop.into());
            }
            if pages.len() >= self.req.max_pages as usize {
                return Err(Error::TooManyPages(self.req.max_pages).into());
            }
            pages.push(self.fetch_later(&next, total, &counted)?);
        }
        Ok(finish(pages, total))
    }

    /// Pages 2..=`last`, concurrently, all or nothing: the first failure
    /// stops new pages, and the earliest page's failure wins.
    fn fetch_concurrently<I: Item>(
        &self,
        next: &Uri,
        last: u64,
        total: u64,
        counted: &AtomicU64,
    ) -> Result<Vec<Fetched<I>>, Halt> {
        let count = usize::try_from(last.saturating_sub(1)).unwrap_or(usize::MAX);
        let stop = AtomicBool::new(false);
        let halted: Mutex<Option<(usize, Halt)>> = Mutex::new(None);
        let results = pool::run_indexed(
            "droplet_page",
            count,
            self.helpers,
            PAGE_STACK,
            || stop.load(Ordering::Relaxed),
            |i| match self.fetch_later(&page_url(next, i as u64 + 2), total, counted) {
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
            },
        );
        if let Some((_, halt)) = halted.into_inner().unwrap_or_else(|e| e.into_inner()) {
            return Err(halt);
        }
        // No halt: every page ran (`stop` is only set with `halted`).
        Ok(results.into_iter().flatten().flatten().collect())
    }

    /// A page after page 1, checked against page 1's total and `max_droplets`.
    fn fetch_later<I: Item>(
        &self,
        url: &str,
        total: u64,
        counted: &AtomicU64,
    ) -> Result<Fetched<I>, Halt> {
        let page = self.fetch_page::<I>(url)?;
        if page.total != total {
            return Err(Halt::TotalChanged { first: total, now: page.total });
        }
        let len = page.items.len() as u64;
        let so_far = counted.fetch_add(len, Ordering::Relaxed).saturating_add(len);
        if so_far > self.req.max_droplets {
            return Err(Error::TooManyDroplets(self.req.max_droplets).into());
        }
        Ok(page)
    }

    fn fetch_page<I: Item>(&self, url: &str) -> Result<Fetched<I>, Error> {
        let body = self.get(url)?;
        let per_page = usize::try_from(self.req.per_page).unwrap_or(usize::MAX);
        let mut page =
            parse_bounded(&body, per_page, &self.tally, |de| Page::<I>::deserialize(de))?;
        I::pick(&mut page.droplets, &body, &self.req.fields, &self.tally)?;
        self.checked(page)
    }

    /// The body of a 2xx answer to `url`, following same-origin redirects.
    fn get(&self, url: &str) -> Result<Vec<u8>, Error> {
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
                200..=299 => return exchange.body,
                status @ 300..=399 => {
                    let Some(location) = exchange.location else {
                        return Err(Error::HttpStatus(status));
                    };
                    let target = resolve_location(&current, &location)
                        .filter(|t| same_origin_url(&self.req.api_url, t).is_some())
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

    /// Links get the token, so they must be on the API's origin.
    fn checked<I>(&self, page: Page<I>) -> Result<Fetched<I>, Error> {
        let on_origin =
            |link: &str| same_origin_url(&self.req.api_url, link).ok_or(Error::ForeignLink);
        let links = page.links.pages;
        let next = links.next.as_deref().map(on_origin).transpose()?;
        let last = links.last.as_deref().map(on_origin).transpose()?;
        Ok(Fetched {
            items: page.droplets,
            total: page.meta.total,
            next,
            last_page: last.and_then(|uri| page_number(&uri.to_string())),
        })
    }

    /// `Timeout` once the deadline passed.
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

/// Pages as page 1 tells: its `last` link, else `meta.total` over its size.
fn page_count<I>(first: &Fetched<I>) -> Option<u64> {
    if let Some(last) = first.last_page {
        return Some(last);
    }
    let per_page = first.items.len() as u64;
    (per_page > 0).then(|| first.total.div_ceil(per_page))
}

/// The fewest droplets in `pages` pages, all but the last as full as page 1.
fn fewest_droplets(pages: u64, first_len: u64) -> u64 {
    if pages <= 1 {
        return first_len;
    }
    (pages - 1).saturating_mul(first_len).saturating_add(1)
}

/// The pages' items, the first of each id.
fn finish<I: Item>(pages: Vec<Fetched<I>>, total: u64) -> (Vec<I>, u64) {
    let mut seen = HashSet::new();
    let items = pages.into_iter().flat_map(|p| p.items);
    (items.filter(|item| item.id().is_none_or(|id| seen.insert(id))).collect(), total)
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod wire_tests;
