//! Reading arguments without ever raising `badarg`: the request map holds
//! the token, and a badarg's stack trace would print it. Every problem
//! becomes `{:invalid_request, detail}`, and no detail quotes a value.

use droplet_core::api::ListRequest;
use droplet_core::filters::{Gpus, ListFilter};
use droplet_core::probe::MAX_TARGETS;
use droplet_core::select::Network;
use droplet_core::Error;
use rustler::{Atom, Binary, Term, TermType};
use std::time::Duration;

use crate::atoms;

fn invalid(detail: impl Into<String>) -> Error {
    Error::InvalidRequest(detail.into())
}

/// A request for `list_droplets`, plus the raw selection choice: checking
/// it (private IPv6) happens in the listing thread so its error arrives as
/// the listing's result, like every other listing error.
pub struct ListArgs {
    pub request: ListRequest,
    pub select: Option<(Network, bool)>,
}

/// The value under `key`, treating `nil` as absent.
fn field<'a>(map: Term<'a>, key: Atom) -> Option<Term<'a>> {
    map.map_get(key).ok().filter(|v| !is_nil(*v))
}

fn is_nil(term: Term) -> bool {
    term.decode::<Atom>().is_ok_and(|a| a == atoms::nil())
}

fn utf8(term: Term, name: &str) -> Result<String, Error> {
    let bin = term
        .decode::<Binary>()
        .map_err(|_| invalid(format!("{name} must be a binary")))?;
    std::str::from_utf8(bin.as_slice())
        .map(str::to_owned)
        .map_err(|_| invalid(format!("{name} must be valid UTF-8")))
}

fn non_empty(term: Term, name: &str) -> Result<String, Error> {
    let s = utf8(term, name)?;
    if s.is_empty() {
        return Err(invalid(format!("{name} must not be empty")));
    }
    Ok(s)
}

pub fn int_in(term: Term, name: &str, min: u64, max: u64) -> Result<u64, Error> {
    term.decode::<i64>()
        .ok()
        .and_then(|i| u64::try_from(i).ok())
        .filter(|i| (min..=max).contains(i))
        .ok_or_else(|| invalid(format!("{name} must be an integer in {min}..{max}")))
}

fn opt_int(map: Term, key: Atom, name: &str, min: u64, max: u64) -> Result<Option<u64>, Error> {
    field(map, key)
        .map(|t| int_in(t, name, min, max))
        .transpose()
}

const HOUR_MS: u64 = 3_600_000;
/// The idle age of a kept-alive connection may be longer than any other
/// duration here: it must cover the longest wait between two polls.
const DAY_MS: u64 = 24 * HOUR_MS;

pub fn list_args(term: Term) -> Result<ListArgs, Error> {
    if term.get_type() != TermType::Map {
        return Err(invalid("request must be a map"));
    }
    let api_url = field(term, atoms::api_url())
        .ok_or_else(|| invalid("api_url is required"))
        .and_then(|t| utf8(t, "api_url"))?;
    let token = field(term, atoms::token())
        .ok_or_else(|| invalid("token is required"))
        .and_then(|t| non_empty(t, "token"))?;
    let mut request = ListRequest::new(&api_url, &token)?;

    let tags = field(term, atoms::tag_name()).map(tag_names).transpose()?;
    let name = field(term, atoms::name())
        .map(|t| non_empty(t, "name"))
        .transpose()?;
    request.filter = match (tags, name) {
        (Some(_), Some(_)) => return Err(invalid("tag_name and name cannot both be set")),
        (Some(tags), None) => ListFilter::Tags(tags),
        (None, Some(name)) => ListFilter::Name(name),
        (None, None) => ListFilter::All,
    };
    request.gpus = match field(term, atoms::gpus()).map(|t| t.decode::<Atom>()) {
        None => Gpus::Exclude,
        Some(Ok(a)) if a == atoms::false_() => Gpus::Exclude,
        Some(Ok(a)) if a == atoms::true_() => Gpus::Include,
        Some(Ok(a)) if a == atoms::only() => Gpus::Only,
        Some(_) => return Err(invalid("gpus must be false, true or :only")),
    };
    request.ca_file = field(term, atoms::ca_file())
        .map(|t| non_empty(t, "ca_file"))
        .transpose()?;

    let ms = Duration::from_millis;
    if let Some(n) = opt_int(term, atoms::per_page(), "per_page", 1, 200)? {
        request.per_page = n as u32;
    }
    if let Some(n) = opt_int(
        term,
        atoms::connect_timeout_ms(),
        "connect_timeout_ms",
        1,
        HOUR_MS,
    )? {
        request.connect_timeout = ms(n);
    }
    if let Some(n) = opt_int(
        term,
        atoms::request_timeout_ms(),
        "request_timeout_ms",
        1,
        HOUR_MS,
    )? {
        request.request_timeout = ms(n);
    }
    if let Some(n) = opt_int(term, atoms::deadline_ms(), "deadline_ms", 1, HOUR_MS)? {
        request.deadline = ms(n);
    }
    if let Some(n) = opt_int(term, atoms::max_body_bytes(), "max_body_bytes", 1, 1 << 32)? {
        request.max_body_bytes = n;
    }
    if let Some(n) = opt_int(term, atoms::max_pages(), "max_pages", 1, 1_000_000)? {
        request.max_pages = n as u32;
    }
    if let Some(n) = opt_int(term, atoms::max_droplets(), "max_droplets", 1, 10_000_000)? {
        request.max_droplets = n;
    }
    if let Some(n) = opt_int(term, atoms::page_concurrency(), "page_concurrency", 1, 64)? {
        request.page_concurrency = n as usize;
    }
    if let Some(n) = opt_int(term, atoms::keep_alive_ms(), "keep_alive_ms", 0, DAY_MS)? {
        request.keep_alive = ms(n);
    }
    let select = field(term, atoms::select()).map(select_arg).transpose()?;
    Ok(ListArgs { request, select })
}

/// One tag (a binary) or several (a non-empty proper list of binaries).
fn tag_names(term: Term) -> Result<Vec<String>, Error> {
    if term.get_type() == TermType::Binary {
        return Ok(vec![non_empty(term, "tag_name")?]);
    }
    let bad = || invalid("tag_name must be a binary or a non-empty list of binaries");
    // list_length refuses improper lists, which the iterator would cut short.
    let len = term.list_length().map_err(|_| bad())?;
    if len == 0 {
        return Err(bad());
    }
    term.into_list_iterator()
        .map_err(|_| bad())?
        .map(|t| non_empty(t, "each tag_name"))
        .collect()
}

fn select_arg(term: Term) -> Result<(Network, bool), Error> {
    let bad = || invalid("select must be nil or %{network: :private | :public, ipv6: boolean}");
    if term.get_type() != TermType::Map {
        return Err(bad());
    }
    let network = match field(term, atoms::network()).map(|t| t.decode::<Atom>()) {
        Some(Ok(a)) if a == atoms::private() => Network::Private,
        Some(Ok(a)) if a == atoms::public() => Network::Public,
        _ => return Err(bad()),
    };
    let ipv6 = match field(term, atoms::ipv6()) {
        None => false,
        Some(t) => t.decode::<bool>().map_err(|_| bad())?,
    };
    Ok((network, ipv6))
}

pub struct ProbeArgs {
    /// How many addresses the list holds; the addresses themselves are read
    /// on the call's own thread (`address_bytes`), off the scheduler.
    pub targets: usize,
    pub port: u16,
    pub timeout: Duration,
    pub concurrency: usize,
}

pub fn probe_args(
    addresses: Term,
    port: Term,
    timeout_ms: Term,
    concurrency: Term,
) -> Result<ProbeArgs, Error> {
    let targets = address_count(addresses)?;
    let port = int_in(port, "port", 1, 65_535)? as u16;
    let timeout = Duration::from_millis(int_in(timeout_ms, "timeout_ms", 1, HOUR_MS)?);
    // Any positive concurrency is accepted; the core caps it.
    let concurrency = int_in(concurrency, "concurrency", 1, i64::MAX as u64)?;
    Ok(ProbeArgs {
        targets,
        port,
        timeout,
        concurrency: usize::try_from(concurrency).unwrap_or(usize::MAX),
    })
}

/// The length of a proper list of at most `MAX_TARGETS` binaries. This runs
/// on the caller's scheduler, so it stops at the first cell past the cap
/// instead of walking a list of any length, and reads no binary's bytes.
fn address_count(list: Term) -> Result<usize, Error> {
    let not_a_list = || invalid("addresses must be a list of binaries");
    let mut rest = list;
    let mut count = 0;
    while !rest.is_empty_list() {
        // Fails on a non-list, including the tail of an improper list.
        let (head, tail) = rest.list_get_cell().map_err(|_| not_a_list())?;
        if count == MAX_TARGETS {
            return Err(invalid(format!(
                "addresses must number at most {MAX_TARGETS}"
            )));
        }
        if !head.is_binary() {
            return Err(not_a_list());
        }
        count += 1;
        rest = tail;
    }
    Ok(count)
}

/// The bytes of each address of a list `address_count` accepted, borrowed
/// from the term, never copied. Raw bytes: a non-UTF-8 or oversized address
/// is that target's `:invalid_address`, not a reason to refuse the batch.
pub fn address_bytes<'a>(list: Term<'a>) -> Vec<&'a [u8]> {
    match list.into_list_iterator() {
        Ok(items) => items
            .map(|t| t.decode::<Binary>().map_or(&[][..], |b| b.as_slice()))
            .collect(),
        Err(_) => Vec::new(),
    }
}
