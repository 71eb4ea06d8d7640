//! Reading arguments without ever raising `badarg`: the request map holds
//! the token, and a badarg's stack trace would print it. Every problem
//! becomes `{:invalid_request, detail}`, and no detail quotes a value.

use droplet_core::api::ListRequest;
use droplet_core::autoscale::{Pool, PoolRef};
use droplet_core::fields::{MAX_DEPTH, MAX_PATHS};
use droplet_core::filters::{Gpus, ListFilter, MAX_TAGS};
use droplet_core::probe::{Check, MAX_TARGETS};
use droplet_core::select::Network;
use droplet_core::Error;
use rustler::types::map::MapIterator;
use rustler::{Atom, Binary, NifMap, NifUnitEnum, Term, TermType};
use serde_json::{Map, Value};
use std::time::Duration;

use crate::atoms;

fn invalid(detail: impl Into<String>) -> Error {
    Error::InvalidRequest(detail.into())
}

/// A request, and the selection, checked on the listing's thread so that
/// its error (private IPv6) arrives as the listing's result.
pub struct ListArgs {
    pub request: ListRequest,
    pub select: Option<(Network, bool)>,
}

/// The value under `key`, treating `nil` as absent.
fn field<'a>(map: Term<'a>, key: &str) -> Option<Term<'a>> {
    let key = Atom::from_str(map.get_env(), key).ok()?;
    map.map_get(key).ok().filter(|v| v.decode::<Atom>().ok() != Some(atoms::nil()))
}

/// Longer than any URL, path, token, name or tag: refused unread.
pub const MAX_BINARY_BYTES: usize = 4096;

fn utf8(term: Term, name: &str) -> Result<String, Error> {
    let bin = term.decode::<Binary>().map_err(|_| invalid(format!("{name} must be a binary")))?;
    if bin.len() > MAX_BINARY_BYTES {
        return Err(invalid(format!("{name} must be at most {MAX_BINARY_BYTES} bytes")));
    }
    std::str::from_utf8(bin.as_slice())
        .map(str::to_owned)
        .map_err(|_| invalid(format!("{name} must be valid UTF-8")))
}

fn non_empty(term: Term, name: &str) -> Result<String, Error> {
    let s = utf8(term, name)?;
    (!s.is_empty()).then_some(s).ok_or_else(|| invalid(format!("{name} must not be empty")))
}

fn int_in(term: Term, name: &str, min: u64, max: u64) -> Result<u64, Error> {
    term.decode::<i64>()
        .ok()
        .and_then(|i| u64::try_from(i).ok())
        .filter(|i| (min..=max).contains(i))
        .ok_or_else(|| invalid(format!("{name} must be an integer in {min}..{max}")))
}

const HOUR_MS: u64 = 3_600_000;
/// The idle age of a connection must cover the longest wait between polls.
const DAY_MS: u64 = 24 * HOUR_MS;
/// Bounds in bytes or counts: far above anything sensible, far below overflow.
const MAX_BOUND: u64 = 1 << 40;

/// An integer option: its key, its range and where it goes.
type Int<'a> = (&'static str, u64, u64, &'a mut dyn FnMut(u64));

#[derive(NifUnitEnum)]
enum GpusArg {
    False,
    True,
    Only,
}

#[derive(NifUnitEnum)]
enum NetworkArg {
    Private,
    Public,
}

#[derive(NifMap)]
struct SelectArg {
    network: NetworkArg,
    ipv6: bool,
}

pub fn list_args(term: Term) -> Result<ListArgs, Error> {
    if term.get_type() != TermType::Map {
        return Err(invalid("request must be a map"));
    }
    let required = |key| field(term, key).ok_or_else(|| invalid(format!("{key} is required")));
    let api_url = utf8(required("api_url")?, "api_url")?;
    let mut request = ListRequest::new(&api_url, &non_empty(required("token")?, "token")?)?;
    let tags = field(term, "tag_name").map(tag_names).transpose()?;
    let name = field(term, "name").map(|t| non_empty(t, "name")).transpose()?;
    request.filter = match (tags, name) {
        (Some(_), Some(_)) => return Err(invalid("tag_name and name cannot both be set")),
        (Some(tags), None) => ListFilter::Tags(tags),
        (None, Some(name)) => ListFilter::Name(name),
        (None, None) => ListFilter::All,
    };
    request.pool = field(term, "autoscale_pool").map(pool_ref).transpose()?;
    if request.pool.is_some() && request.filter != ListFilter::All {
        return Err(invalid("autoscale_pool cannot be set with tag_name or name"));
    }
    request.fields = field(term, "fields").map(field_paths).transpose()?.unwrap_or_default();
    request.gpus = match field(term, "gpus").map(|t| t.decode()) {
        None | Some(Ok(GpusArg::False)) => Gpus::Exclude,
        Some(Ok(GpusArg::True)) => Gpus::Include,
        Some(Ok(GpusArg::Only)) => Gpus::Only,
        Some(Err(_)) => return Err(invalid("gpus must be false, true or :only")),
    };
    request.ca_file = field(term, "ca_file").map(|t| non_empty(t, "ca_file")).transpose()?;
    let (ms, r) = (Duration::from_millis, &mut request);
    let mut ints: [Int; 13] = [
        ("per_page", 1, 200, &mut |n| r.per_page = n as u32),
        ("connect_timeout_ms", 1, HOUR_MS, &mut |n| r.connect_timeout = ms(n)),
        ("request_timeout_ms", 1, HOUR_MS, &mut |n| r.request_timeout = ms(n)),
        ("deadline_ms", 1, HOUR_MS, &mut |n| r.deadline = ms(n)),
        ("max_body_bytes", 1, 1 << 32, &mut |n| r.max_body_bytes = n),
        ("max_pages", 1, 1_000_000, &mut |n| r.max_pages = n as u32),
        ("max_droplets", 1, 10_000_000, &mut |n| r.max_droplets = n),
        ("page_concurrency", 1, 64, &mut |n| r.page_concurrency = n as usize),
        ("keep_alive_ms", 0, DAY_MS, &mut |n| r.keep_alive = ms(n)),
        ("max_listing_bytes", 1, MAX_BOUND, &mut |n| r.limits.max_listing_bytes = n),
        ("max_string_bytes", 1, MAX_BOUND, &mut |n| r.limits.max_string_bytes = n as usize),
        ("max_tags_per_droplet", 1, MAX_BOUND, &mut |n| r.limits.max_tags_per_droplet = n as usize),
        ("max_addresses_per_droplet", 1, MAX_BOUND, &mut |n| {
            r.limits.max_addresses_per_droplet = n as usize
        }),
    ];
    for (name, min, max, set) in &mut ints {
        if let Some(value) = field(term, name) {
            set(int_in(value, name, *min, *max)?);
        }
    }
    let select = field(term, "select").map(select_arg).transpose()?;
    Ok(ListArgs { request, select })
}

/// One tag, or a non-empty list of at most `MAX_TAGS`.
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
    (!tags.is_empty()).then_some(tags).ok_or_else(bad)
}

/// `%{id, name, tags}`: a pool to look up by id or name, or known (all three).
fn pool_ref(term: Term) -> Result<PoolRef, Error> {
    if term.get_type() != TermType::Map {
        return Err(invalid("autoscale_pool must be nil or a map"));
    }
    let text = |key, name| field(term, key).map(|t| non_empty(t, name)).transpose();
    let id = text("id", "autoscale_pool.id")?;
    let name = text("name", "autoscale_pool.name")?;
    let tags = field(term, "tags").map(|t| binaries(t, "autoscale_pool.tags", MAX_TAGS));
    let tags = tags.transpose()?;
    match (id, name, tags) {
        (Some(id), Some(name), Some(tags)) => {
            Ok(PoolRef::Known(Pool { id, name, tags, members: Vec::new() }))
        }
        (Some(id), _, None) => Ok(PoolRef::Id(id)),
        (None, Some(name), None) => Ok(PoolRef::Name(name)),
        _ => Err(invalid("autoscale_pool needs an id or a name, and both with tags")),
    }
}

/// A proper list of at most `max` binaries.
fn binaries(term: Term, name: &str, max: usize) -> Result<Vec<String>, Error> {
    let mut items = Vec::new();
    let bad = || invalid(format!("{name} must be a list of binaries"));
    walk_list(term, max, name, bad, |t| utf8(t, name).map(|s| items.push(s)))?;
    Ok(items)
}

/// Paths of droplet fields to pass through; a path named twice, once.
fn field_paths(term: Term) -> Result<Vec<Vec<String>>, Error> {
    let mut paths: Vec<Vec<String>> = Vec::new();
    let bad = || invalid(format!("fields must be a list of paths, each 1 to {MAX_DEPTH} binaries"));
    walk_list(term, MAX_PATHS, "fields", bad, |path| {
        let keys = binaries(path, "fields: each path", MAX_DEPTH)?;
        if keys.is_empty() {
            return Err(bad());
        }
        if !paths.iter().any(|p| p.join(".") == keys.join(".")) {
            paths.push(keys);
        }
        Ok(())
    })?;
    Ok(paths)
}

/// `each` on the elements of a proper list of at most `max`, stopping at
/// the cell past it (this runs on the scheduler).
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
    let SelectArg { network, ipv6 } = term.decode().map_err(|_| bad())?;
    let network = match network {
        NetworkArg::Private => Network::Private,
        NetworkArg::Public => Network::Public,
    };
    Ok((network, ipv6))
}

pub struct ProbeArgs {
    /// How many addresses: they are read on the call's thread.
    pub targets: usize,
    pub check: Check,
    pub concurrency: usize,
}

pub fn probe_args(addresses: Term, check: Term, concurrency: Term) -> Result<ProbeArgs, Error> {
    let targets = address_count(addresses)?;
    let check = Check::from_value(&check_map(check)?)?;
    // Any positive concurrency is accepted; the core caps it.
    let concurrency = int_in(concurrency, "concurrency", 1, i64::MAX as u64)?;
    Ok(ProbeArgs {
        targets,
        check,
        concurrency: usize::try_from(concurrency).unwrap_or(usize::MAX),
    })
}

/// A check's map, and each list in it, holds at most this many items.
const MAX_CHECK_ITEMS: usize = 16;
const MAX_CHECK_BINARY: usize = 1024;

/// A health check's map read generically, so that a new kind needs nothing
/// here: atom keys, each value a scalar or a list of scalars, all small.
fn check_map(term: Term) -> Result<Value, Error> {
    let max = MAX_CHECK_ITEMS;
    if term.map_size().map_or(true, |n| n > max) {
        return Err(invalid(format!("check: must be a map of at most {max} entries")));
    }
    let mut fields = Map::new();
    for (key, value) in MapIterator::new(term).into_iter().flatten() {
        let key = key.atom_to_string().map_err(|_| invalid("check: keys must be atoms"))?;
        let value = check_value(value, true).ok_or_else(|| {
            invalid(format!(
                "check: {key} must be an atom, an integer, a binary of at most \
                 {MAX_CHECK_BINARY} bytes, or a list of at most {max} of them"
            ))
        })?;
        fields.insert(key, value);
    }
    Ok(Value::Object(fields))
}

fn check_value(term: Term, list: bool) -> Option<Value> {
    match term.get_type() {
        TermType::Atom => Some(match term.atom_to_string().ok()?.as_str() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            "nil" => Value::Null,
            atom => Value::from(atom),
        }),
        TermType::Integer => term.decode::<i64>().ok().map(Value::from),
        TermType::Binary => {
            let bin = term.decode::<Binary>().ok().filter(|b| b.len() <= MAX_CHECK_BINARY)?;
            std::str::from_utf8(bin.as_slice()).ok().map(Value::from)
        }
        TermType::List if list => {
            let (mut items, mut rest) = (Vec::new(), term);
            while let Ok((head, tail)) = rest.list_get_cell() {
                if items.len() == MAX_CHECK_ITEMS {
                    return None;
                }
                items.push(check_value(head, false)?);
                rest = tail;
            }
            rest.is_empty_list().then_some(Value::Array(items))
        }
        _ => None,
    }
}

/// The length of a proper list of at most `MAX_TARGETS` binaries, whose
/// bytes are not read here.
fn address_count(list: Term) -> Result<usize, Error> {
    let not_a_list = || invalid("addresses must be a list of binaries");
    walk_list(list, MAX_TARGETS, "addresses", not_a_list, |head| {
        head.is_binary().then_some(()).ok_or_else(not_a_list)
    })
}

/// The bytes of each address, borrowed; a bad one is that target's
/// `:invalid_address`, not a reason to refuse the batch.
pub fn address_bytes<'a>(list: Term<'a>) -> Vec<&'a [u8]> {
    let bytes = |t: Term<'a>| t.decode::<Binary>().map_or(&[][..], |b| b.as_slice());
    list.into_list_iterator().map(|items| items.map(bytes).collect()).unwrap_or_default()
}
