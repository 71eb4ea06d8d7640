//! Rust results as the terms `LibclusterDroplet.Native` documents.

use droplet_core::api::{Listing, Stats};
use droplet_core::bounds::Bound;
use droplet_core::model::{AddressType, Droplet, NetAddress, Status};
use droplet_core::probe::{ProbeError, ProbeResult};
use droplet_core::ratelimit::RateLimit;
use droplet_core::select::Selector;
use droplet_core::Error;
use rustler::{Encoder, Env, Term};
use std::time::Duration;

use crate::atoms;

/// A map with atom keys. Building one can only fail on duplicate keys, which
/// our fixed key lists never have; `nil` stands in rather than a panic.
fn map<'a>(env: Env<'a>, keys: &[rustler::Atom], values: &[Term<'a>]) -> Term<'a> {
    let keys: Vec<Term<'a>> = keys.iter().map(|k| k.encode(env)).collect();
    Term::map_from_term_arrays(env, &keys, values).unwrap_or_else(|_| atoms::nil().encode(env))
}

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
        Error::Spawn(d) => (atoms::spawn(), d.as_str()).encode(env),
        Error::Panic(d) => (atoms::panic(), d.as_str()).encode(env),
        Error::Busy => atoms::busy().encode(env),
        Error::Cancelled => atoms::cancelled().encode(env),
    }
}

pub fn error<'a>(env: Env<'a>, e: &Error) -> Term<'a> {
    (atoms::error(), reason(env, e)).encode(env)
}

fn status<'a>(env: Env<'a>, s: &Status) -> Term<'a> {
    match s {
        Status::New => atoms::new().encode(env),
        Status::Active => atoms::active().encode(env),
        Status::Off => atoms::off().encode(env),
        Status::Archive => atoms::archive().encode(env),
        Status::Other(other) => other.as_str().encode(env),
    }
}

fn addresses<'a>(env: Env<'a>, list: &[NetAddress]) -> Term<'a> {
    let items: Vec<Term<'a>> = list
        .iter()
        .map(|a| {
            let kind = match &a.kind {
                AddressType::Public => atoms::public().encode(env),
                AddressType::Private => atoms::private().encode(env),
                AddressType::Other(other) => other.as_str().encode(env),
            };
            (a.ip_address.as_str(), kind).encode(env)
        })
        .collect();
    items.encode(env)
}

fn droplet<'a>(env: Env<'a>, d: &Droplet, select: Option<&Selector>) -> Term<'a> {
    let address = select.and_then(|s| s.select(d));
    map(
        env,
        &[
            atoms::id(),
            atoms::name(),
            atoms::status(),
            atoms::tags(),
            atoms::region(),
            atoms::vpc_uuid(),
            atoms::v4(),
            atoms::v6(),
            atoms::address(),
        ],
        &[
            d.id.encode(env),
            d.name.as_str().encode(env),
            status(env, &d.status),
            d.tags().encode(env),
            d.region.as_deref().encode(env),
            d.vpc_uuid.as_deref().encode(env),
            addresses(env, &d.networks.v4),
            addresses(env, &d.networks.v6),
            address.encode(env),
        ],
    )
}

pub fn listing<'a>(env: Env<'a>, listing: &Listing, select: Option<&Selector>) -> Term<'a> {
    let droplets: Vec<Term<'a>> = listing
        .droplets
        .iter()
        .map(|d| droplet(env, d, select))
        .collect();
    let body = map(
        env,
        &[atoms::droplets(), atoms::total()],
        &[droplets.encode(env), listing.total.encode(env)],
    );
    (atoms::ok(), body).encode(env)
}

fn rate_limit<'a>(env: Env<'a>, rl: &RateLimit) -> Term<'a> {
    map(
        env,
        &[
            atoms::limit(),
            atoms::remaining(),
            atoms::reset(),
            atoms::retry_after(),
        ],
        &[
            rl.limit.encode(env),
            rl.remaining.encode(env),
            rl.reset.encode(env),
            rl.retry_after.encode(env),
        ],
    )
}

pub fn info<'a>(env: Env<'a>, stats: &Stats, elapsed: Duration) -> Term<'a> {
    let elapsed_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    let rl = match stats.rate_limit() {
        Some(rl) => rate_limit(env, &rl),
        None => atoms::nil().encode(env),
    };
    map(
        env,
        &[atoms::requests(), atoms::elapsed_us(), atoms::rate_limit()],
        &[stats.requests().encode(env), elapsed_us.encode(env), rl],
    )
}

fn probe_outcome<'a>(env: Env<'a>, r: &ProbeResult) -> Term<'a> {
    match r {
        Ok(latency) => {
            let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
            (atoms::ok(), us).encode(env)
        }
        Err(e) => {
            let reason = match e {
                ProbeError::Timeout => atoms::timeout().encode(env),
                ProbeError::Refused => atoms::refused().encode(env),
                ProbeError::Unreachable => atoms::unreachable().encode(env),
                ProbeError::InvalidAddress => atoms::invalid_address().encode(env),
                ProbeError::Io(d) => (atoms::io(), d.as_str()).encode(env),
            };
            (atoms::error(), reason).encode(env)
        }
    }
}

/// `[{address, outcome}]`, each address the very term the caller passed.
/// `addresses` is the list `results` came from, one item per target.
pub fn probe_results<'a>(env: Env<'a>, addresses: Term<'a>, results: &[ProbeResult]) -> Term<'a> {
    match addresses.into_list_iterator() {
        Ok(addresses) => {
            let items: Vec<Term<'a>> = addresses
                .zip(results)
                .map(|(addr, r)| (addr, probe_outcome(env, r)).encode(env))
                .collect();
            items.encode(env)
        }
        // The NIF checked it was a list before starting the call.
        Err(_) => error(
            env,
            &Error::InvalidRequest("addresses must be a list of binaries".into()),
        ),
    }
}
