//! Reading arguments without ever raising `badarg`: the request map holds
//! the token, and a badarg's stack trace would print it. Every problem
//! becomes `{:invalid_request, detail}`, and no detail quotes a value.

use droplet_core::api::ListRequest;
use droplet_core::filters::{Gpus, ListFilter, MAX_TAGS};
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

/// Longer than any URL, path, token, name or tag the request may hold; a
/// longer binary is refused before its bytes are read on the scheduler.
pub const MAX_BINARY_BYTES: usize = 4096;

fn utf8(term: Term, name: &str) -> Result<String, Error> {
    let bin = term
        .decode::<Binary>()
        .map_err(|_| invalid(format!("{name} must be a binary")))?;
    if bin.len() > MAX_BINARY_BYTES {
        return Err(invalid(format!(
            "{name} must be at most {MAX_BINARY_BYTES} bytes"
        )));
    }
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
    let limits = &mut request.limits;
    let max = |key, name| opt_int(term, key, name, 1, 1 << 40);
    if let Some(n) = max(atoms::max_listing_bytes(), "max_listing_bytes")? {
        limits.max_listing_bytes = n;
    }
    if let Some(n) = max(atoms::max_string_bytes(), "max_string_bytes")? {
        limits.max_string_bytes = n as usize;
    }
    if let Some(n) = max(atoms::max_tags_per_droplet(), "max_tags_per_droplet")? {
        limits.max_tags_per_droplet = n as usize;
    }
    if let Some(n) = max(
        atoms::max_addresses_per_droplet(),
        "max_addresses_per_droplet",
    )? {
        limits.max_addresses_per_droplet = n as usize;
    }
    let select = field(term, atoms::select()).map(select_arg).transpose()?;
    Ok(ListArgs { request, select })
}

/// One tag (a binary) or several (a non-empty proper list of at most
/// `MAX_TAGS` binaries).
fn tag_names(term: Term) -> Result<Vec<String>, Error> {
    if term.get_type() == TermType::Binary {
        return Ok(vec![non_empty(term, "tag_name")?]);
    }
    let bad = || invalid("tag_name must be a binary or a non-empty list of binaries");
    let mut tags = Vec::new();
    walk_list(term, MAX_TAGS, "tag_name", bad, |t| {
        tags.push(non_empty(t, "each tag_name")?);
        Ok(())
    })?;
    if tags.is_empty() {
        return Err(bad());
    }
    Ok(tags)
}

/// Calls `each` on the elements of a proper list of at most `max`. This
/// runs on the caller's scheduler, so it stops at the first cell past the
/// cap instead of walking a list of any length; `not_a_list` for anything
/// else, an improper tail included.
fn walk_list<'a>(
    list: Term<'a>,
    max: usize,
    name: &str,
    not_a_list: impl Fn() -> Error,
    mut each: impl FnMut(Term<'a>) -> Result<(), Error>,
) -> Result<usize, Error> {
    let mut rest = list;
    let mut count = 0;
    while !rest.is_empty_list() {
        let (head, tail) = rest.list_get_cell().map_err(|_| not_a_list())?;
        if count == max {
            return Err(invalid(format!("{name} must number at most {max}")));
        }
        each(head)?;
        count += 1;
        rest = tail;
    }
    Ok(count)
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

/// The length of a proper list of at most `MAX_TARGETS` binaries, whose
/// bytes are not read here.
fn address_count(list: Term) -> Result<usize, Error> {
    let not_a_list = || invalid("addresses must be a list of binaries");
    walk_list(list, MAX_TARGETS, "addresses", not_a_list, |head| {
        head.is_binary().then_some(()).ok_or_else(not_a_list)
    })
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
