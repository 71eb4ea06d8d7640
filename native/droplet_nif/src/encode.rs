//! Rust results as the terms `LibclusterDroplet.Native` documents.

use droplet_core::api::{Listing, Stats};
use droplet_core::autoscale::{Member, Pool};
use droplet_core::bounds::Bound;
use droplet_core::model::{AddressType, Droplet, NetAddress, Status};
use droplet_core::probe::{ProbeError, ProbeResult};
use droplet_core::ratelimit::RateLimit;
use droplet_core::select::Selector;
use droplet_core::Error;
use rustler::{Atom, Encoder, Env, NifMap, NifTaggedEnum, NifUntaggedEnum, Term};
use serde_json::Value;
use std::time::Duration;

use crate::atoms;

pub fn reason<'a>(env: Env<'a>, e: &Error) -> Term<'a> {
    match e {
        Error::Unauthorized => atoms::unauthorized().encode(env),
        Error::Forbidden(None) => atoms::forbidden().encode(env),
        Error::Forbidden(Some(scope)) => (atoms::forbidden(), scope.as_str()).encode(env),
        Error::RateLimited(s) => (atoms::rate_limited(), s).encode(env),
        Error::HttpStatus(code) => (atoms::http_status(), code).encode(env),
        Error::Timeout => atoms::timeout().encode(env),
        Error::Transport(d) => (atoms::transport(), d.as_str()).encode(env),
        Error::Tls(d) => (atoms::tls(), d.as_str()).encode(env),
        Error::InvalidJson(d) => (atoms::invalid_json(), d.as_str()).encode(env),
        Error::UnexpectedShape(d) => (atoms::unexpected_shape(), d.as_str()).encode(env),
        Error::Inconsistent(d) => (atoms::inconsistent(), d.as_str()).encode(env),
        Error::ForeignLink => atoms::foreign_link().encode(env),
        Error::ForeignRedirect => atoms::foreign_redirect().encode(env),
        Error::TooManyRedirects => atoms::too_many_redirects().encode(env),
        Error::PaginationLoop => atoms::pagination_loop().encode(env),
        Error::TooManyPages(max) => (atoms::too_many_pages(), max).encode(env),
        Error::TooManyDroplets(max) => (atoms::too_many_droplets(), max).encode(env),
        Error::ListingTooLarge(bound, limit) => {
            let bound = match bound {
                Bound::MaxListingBytes => atoms::max_listing_bytes(),
                Bound::MaxStringBytes => atoms::max_string_bytes(),
                Bound::MaxTagsPerDroplet => atoms::max_tags_per_droplet(),
                Bound::MaxAddressesPerDroplet => atoms::max_addresses_per_droplet(),
            };
            (atoms::listing_too_large(), (bound, limit)).encode(env)
        }
        Error::BodyTooLarge(limit) => (atoms::body_too_large(), limit).encode(env),
        Error::CaFile(d) => (atoms::ca_file(), d.as_str()).encode(env),
        Error::InvalidRequest(d) => (atoms::invalid_request(), d.as_str()).encode(env),
        Error::NoPrivateIpv6 => atoms::no_private_ipv6().encode(env),
        Error::TagsUnknown => atoms::tags_unknown().encode(env),
        Error::PoolNotFound => atoms::pool_not_found().encode(env),
        Error::Spawn(d) => (atoms::spawn(), d.as_str()).encode(env),
        Error::Panic(d) => (atoms::panic(), d.as_str()).encode(env),
        Error::Busy => atoms::busy().encode(env),
        Error::Cancelled => atoms::cancelled().encode(env),
    }
}

pub fn error<'a>(env: Env<'a>, e: &Error) -> Term<'a> {
    (atoms::error(), reason(env, e)).encode(env)
}

/// A word of the API's: the atom it is known as, or the word itself.
#[derive(NifUntaggedEnum)]
#[rustler(encode)]
enum Word<'d> {
    Known(Atom),
    Other(&'d str),
}

fn status(s: &Status) -> Word<'_> {
    match s {
        Status::New => Word::Known(atoms::new()),
        Status::Active => Word::Known(atoms::active()),
        Status::Off => Word::Known(atoms::off()),
        Status::Archive => Word::Known(atoms::archive()),
        Status::Other(other) => Word::Other(other),
    }
}

fn kind(kind: &AddressType) -> Word<'_> {
    match kind {
        AddressType::Public => Word::Known(atoms::public()),
        AddressType::Private => Word::Known(atoms::private()),
        AddressType::Other(other) => Word::Other(other),
    }
}

fn addresses(list: &[NetAddress]) -> Vec<(&str, Word<'_>)> {
    list.iter().map(|a| (a.ip_address.as_str(), kind(&a.kind))).collect()
}

/// A droplet as `LibclusterDroplet.droplet()` documents it.
#[derive(NifMap)]
#[rustler(encode)]
struct DropletMap<'d> {
    id: u64,
    name: &'d str,
    status: Word<'d>,
    tags: &'d [String],
    region: Option<&'d str>,
    vpc_uuid: Option<&'d str>,
    v4: Vec<(&'d str, Word<'d>)>,
    v6: Vec<(&'d str, Word<'d>)>,
    address: Option<&'d str>,
    fields: Fields<'d>,
}

/// `%{"size.slug" => value}`: each pass-through field's name and value.
struct Fields<'d>(&'d [String], &'d [Value]);

impl Encoder for Fields<'_> {
    fn encode<'a>(&self, env: Env<'a>) -> Term<'a> {
        let value = |v| rustler::serde::to_term(env, v).ok();
        let pairs: Vec<_> = self.0.iter().zip(self.1).map(|(k, v)| (k, value(v))).collect();
        // The NIF passes each name once.
        Term::map_from_pairs(env, &pairs).unwrap_or_else(|_| atoms::nil().encode(env))
    }
}

#[derive(NifMap)]
#[rustler(encode)]
struct MemberMap<'d> {
    droplet_id: u64,
    status: &'d str,
    health_status: Option<&'d str>,
}

#[derive(NifMap)]
#[rustler(encode)]
struct PoolMap<'d> {
    id: &'d str,
    name: &'d str,
    tags: &'d [String],
    members: Vec<MemberMap<'d>>,
}

fn pool<'d>(p: &'d Pool) -> PoolMap<'d> {
    let member = |m: &'d Member| MemberMap {
        droplet_id: m.droplet_id,
        status: &m.status,
        health_status: m.health_status.as_deref(),
    };
    PoolMap {
        id: &p.id,
        name: &p.name,
        tags: &p.tags,
        members: p.members.iter().map(member).collect(),
    }
}

#[derive(NifMap)]
#[rustler(encode)]
struct ListingMap<'d> {
    droplets: Vec<DropletMap<'d>>,
    total: u64,
    pool: Option<PoolMap<'d>>,
}

/// `{:ok, %{droplets: [droplet], total: n, pool: nil | pool}}`.
pub fn listing<'a, 'd>(env: Env<'a>, listing: &'d Listing, select: Option<&Selector>) -> Term<'a> {
    let droplet = |d: &'d Droplet| DropletMap {
        id: d.id,
        name: &d.name,
        status: status(&d.status),
        tags: d.tags(),
        region: d.region.as_deref(),
        vpc_uuid: d.vpc_uuid.as_deref(),
        v4: addresses(&d.networks.v4),
        v6: addresses(&d.networks.v6),
        address: select.and_then(|s| s.select(d)),
        fields: Fields(&listing.fields, &d.fields),
    };
    let body = ListingMap {
        droplets: listing.droplets.iter().map(droplet).collect(),
        total: listing.total,
        pool: listing.pool.as_ref().map(pool),
    };
    (atoms::ok(), body).encode(env)
}

#[derive(NifMap)]
#[rustler(encode)]
struct RateLimitMap {
    limit: Option<u64>,
    remaining: Option<u64>,
    reset: Option<u64>,
    retry_after: Option<u64>,
}

#[derive(NifMap)]
#[rustler(encode)]
struct InfoMap {
    requests: u64,
    pool_requests: u64,
    elapsed_us: u64,
    rate_limit: Option<RateLimitMap>,
}

/// `%{requests: n, elapsed_us: n, rate_limit: nil | %{limit: .., ...}}`.
pub fn info<'a>(env: Env<'a>, stats: &Stats, elapsed: Duration) -> Term<'a> {
    let rate_limit = stats.rate_limit().map(|rl: RateLimit| RateLimitMap {
        limit: rl.limit,
        remaining: rl.remaining,
        reset: rl.reset,
        retry_after: rl.retry_after,
    });
    InfoMap {
        requests: stats.requests(),
        pool_requests: stats.pool_requests(),
        elapsed_us: u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
        rate_limit,
    }
    .encode(env)
}

/// `:timeout | :refused | :unreachable | :invalid_address | {:io, detail}`.
#[derive(NifTaggedEnum)]
#[rustler(encode)]
enum ProbeReason<'a> {
    Timeout,
    Refused,
    Unreachable,
    InvalidAddress,
    Io(&'a str),
}

/// `{:ok, connect_us} | {:error, reason}`.
fn probe_outcome(r: &ProbeResult) -> Result<u64, ProbeReason<'_>> {
    let us = |latency: &Duration| u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    r.as_ref().map(us).map_err(|e| match e {
        ProbeError::Timeout => ProbeReason::Timeout,
        ProbeError::Refused => ProbeReason::Refused,
        ProbeError::Unreachable => ProbeReason::Unreachable,
        ProbeError::InvalidAddress => ProbeReason::InvalidAddress,
        ProbeError::Io(d) => ProbeReason::Io(d),
    })
}

/// `[{address, outcome}]`, each address the very term the caller passed.
/// `addresses` is the list `results` came from, one item per target.
pub fn probe_results<'a>(env: Env<'a>, addresses: Term<'a>, results: &[ProbeResult]) -> Term<'a> {
    // The NIF checked it was a list before starting the call.
    let addresses = addresses.into_list_iterator().into_iter().flatten();
    let items: Vec<_> = addresses.zip(results).map(|(addr, r)| (addr, probe_outcome(r))).collect();
    items.encode(env)
}
