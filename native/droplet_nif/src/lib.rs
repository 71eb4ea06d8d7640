//! Erlang NIF glue of libcluster_droplet: decode arguments, start a thread,
//! return at once; the thread does the work with `droplet_core` and sends
//! the caller a message. No network I/O ever happens on a scheduler.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread;
use std::time::Instant;

use droplet_core::api::{self, Listing, Stats};
use droplet_core::budget::{self, Admission};
use droplet_core::cancel::{Cancel, CancelOnDrop};
use droplet_core::error::{panic_detail, short};
use droplet_core::probe;
use droplet_core::select::Selector;
use droplet_core::Error;
use rustler::env::{OwnedEnv, SavedTerm};
use rustler::{Encoder, Env, LocalPid, ResourceArc, Term, TermType};

#[cfg(feature = "test-panic")]
mod debug;
mod decode;
mod encode;

mod atoms {
    rustler::atoms! {
        ok, error, nil,
        droplet_nif_list, droplet_nif_probe,
        new, active, off, archive, public, private, ca_file,
        max_listing_bytes, max_string_bytes, max_tags_per_droplet,
        max_addresses_per_droplet,
        // reasons
        unauthorized, forbidden, rate_limited, http_status, timeout, transport,
        tls, invalid_json, unexpected_shape, inconsistent, foreign_link,
        foreign_redirect, too_many_redirects, pagination_loop, too_many_pages,
        too_many_droplets, body_too_large, invalid_request, no_private_ipv6, spawn, panic,
        listing_too_large,
        tags_unknown, busy, cancelled, pool_not_found,
        // debug_panic
        nif, list,
    }
}

/// A call's coordinator thread: a listing's parses pages and runs TLS
/// handshakes, a prober's only calls `connect`.
type Coordinator = (&'static str, usize);
const LIST_THREAD: Coordinator = ("droplet_list", 1024 * 1024);
const PROBE_THREAD: Coordinator = ("droplet_probe", 256 * 1024);

#[rustler::nif]
fn nif_version() -> &'static str {
    droplet_core::VERSION
}

/// The caller's handle on a call: dropped, it cancels the call.
struct CallHandle(CancelOnDrop);

#[rustler::resource_impl]
impl rustler::Resource for CallHandle {}

/// Where a call's answer goes: the caller, and its ref saved in the env the
/// answer is built in (which keeps any other term the call needs).
struct Reply {
    pid: LocalPid,
    owned: OwnedEnv,
    reference: SavedTerm,
}

impl Reply {
    fn new(env: Env, reference: Term) -> Reply {
        let owned = OwnedEnv::new();
        let reference = owned.save(reference);
        Reply { pid: env.pid(), owned, reference }
    }

    /// Sends `encode(env, ref, outcome)`; a panic encoding it is sent as an
    /// `Err(Panic)`, so the caller still hears back.
    fn send<R, E>(self, outcome: Result<R, Error>, encode: E)
    where
        E: for<'a> Fn(Env<'a>, Term<'a>, Result<R, Error>) -> Term<'a>,
    {
        let Reply { pid, mut owned, reference } = self;
        let first = catch_unwind(AssertUnwindSafe(|| {
            owned.send_and_clear(&pid, |env| encode(env, reference.load(env), outcome))
        }));
        if first.is_err() {
            let retry = Err(Error::Panic("encoding the result panicked".into()));
            let _ = catch_unwind(AssertUnwindSafe(|| {
                owned.send_and_clear(&pid, |env| encode(env, reference.load(env), retry))
            }));
        }
        // A failed send means the caller is gone; nobody is left to tell.
    }
}

/// Spawns the call's coordinator thread, which runs `work` under
/// `catch_unwind` and answers; returns `{:ok, handle, concurrency}` at once.
fn start_call<'a, R, W, E>(
    env: Env<'a>,
    reply: Reply,
    coordinator: Coordinator,
    admission: Admission<'static>,
    cancel: Cancel,
    work: W,
    encode: E,
) -> Result<Term<'a>, Error>
where
    R: 'static,
    W: FnOnce(&OwnedEnv, &Admission) -> Result<R, Error> + Send + 'static,
    E: for<'b> Fn(Env<'b>, Term<'b>, Result<R, Error>) -> Term<'b> + Send + 'static,
{
    let concurrency = admission.concurrency();
    let handle = ResourceArc::new(CallHandle(CancelOnDrop(cancel)));
    thread::Builder::new()
        .name(coordinator.0.to_string())
        .stack_size(coordinator.1)
        .spawn(move || {
            let outcome = catch_unwind(AssertUnwindSafe(|| work(&reply.owned, &admission)))
                .unwrap_or_else(|payload| Err(Error::Panic(panic_detail(payload.as_ref()))));
            reply.send(outcome, encode);
            // Only now: the slot covers the thread's whole life.
            drop(admission);
        })
        .map_err(|e| Error::Spawn(short(e.to_string())))?;
    Ok((atoms::ok(), handle, concurrency).encode(env))
}

fn started_or_error<'a>(env: Env<'a>, started: Result<Term<'a>, Error>) -> Term<'a> {
    started.unwrap_or_else(|e| encode::error(env, &e))
}

fn require_ref(reference: Term) -> Result<(), Error> {
    let is_ref = reference.get_type() == TermType::Ref;
    is_ref.then_some(()).ok_or_else(|| Error::InvalidRequest("ref must be a reference".into()))
}

type ListOutcome = (Listing, Option<Selector>);

/// The listing thread, shared with `debug_panic(:list)`.
fn start_list<'a, W>(
    env: Env<'a>,
    reference: Term<'a>,
    admission: Admission<'static>,
    cancel: Cancel,
    work: W,
) -> Result<Term<'a>, Error>
where
    W: FnOnce(&Stats, &Admission) -> Result<ListOutcome, Error> + Send + 'static,
{
    let started = Instant::now();
    let stats = Arc::new(Stats::default());
    let for_work = stats.clone();
    start_call(
        env,
        Reply::new(env, reference),
        LIST_THREAD,
        admission,
        cancel,
        move |_owned, admission| work(&for_work, admission),
        move |env, reference, outcome| {
            let result = match &outcome {
                Ok((listing, select)) => encode::listing(env, listing, select.as_ref()),
                Err(e) => encode::error(env, e),
            };
            let info = encode::info(env, &stats, started.elapsed());
            (atoms::droplet_nif_list(), reference, result, info).encode(env)
        },
    )
}

/// `list_droplets(request, ref) :: {:ok, handle, page_concurrency} | {:error, reason}`;
/// the result comes as `{:droplet_nif_list, ref, result, info}`.
#[rustler::nif]
fn list_droplets<'a>(env: Env<'a>, request: Term<'a>, reference: Term<'a>) -> Term<'a> {
    let started =
        require_ref(reference).and_then(|()| decode::list_args(request)).and_then(|mut args| {
            let wanted = args.request.page_concurrency.saturating_sub(1);
            let admission = budget::global().admit(wanted)?;
            args.request.page_concurrency = admission.concurrency();
            let cancel = args.request.cancel.clone();
            start_list(env, reference, admission, cancel, move |stats, helpers| {
                let select =
                    args.select.map(|(network, ipv6)| Selector::new(network, ipv6)).transpose()?;
                let listing = api::list_droplets(&args.request, stats, helpers)?;
                Ok((listing, select))
            })
        });
    started_or_error(env, started)
}

/// `probe(addresses, check, concurrency, ref) :: {:ok, handle, concurrency} | {:error, reason}`;
/// the results come as `{:droplet_nif_probe, ref, [{address, outcome}]}`.
#[rustler::nif]
fn probe<'a>(
    env: Env<'a>,
    addresses: Term<'a>,
    check: Term<'a>,
    concurrency: Term<'a>,
    reference: Term<'a>,
) -> Term<'a> {
    let started = require_ref(reference).and_then(|()| {
        let args = decode::probe_args(addresses, check, concurrency)?;
        let admission =
            budget::global().admit(probe::helpers_wanted(args.targets, args.concurrency))?;
        let cancel = Cancel::new();
        let reply = Reply::new(env, reference);
        // Copied, not decoded, on the scheduler: a short list of heap binaries
        // of at most 64 bytes or off-heap ones (a reference each).
        let kept = reply.owned.save(addresses);
        let for_answer = kept.clone();
        let for_work = cancel.clone();
        start_call(
            env,
            reply,
            PROBE_THREAD,
            admission,
            cancel,
            move |owned, helpers| {
                owned.run(|env| {
                    let targets = decode::address_bytes(kept.load(env));
                    probe::probe_all(&targets, &args.check, helpers, &for_work)
                })
            },
            move |env, reference, outcome| {
                let results = match &outcome {
                    Ok(results) => encode::probe_results(env, for_answer.load(env), results),
                    Err(e) => encode::error(env, e),
                };
                (atoms::droplet_nif_probe(), reference, results).encode(env)
            },
        )
    });
    started_or_error(env, started)
}

/// `cancel(handle) :: :ok | {:error, {:invalid_request, _}}`.
#[rustler::nif]
fn cancel<'a>(env: Env<'a>, handle: Term<'a>) -> Term<'a> {
    match handle.decode::<ResourceArc<CallHandle>>() {
        Ok(handle) => {
            (handle.0).0.cancel();
            atoms::ok().encode(env)
        }
        Err(_) => {
            encode::error(env, &Error::InvalidRequest("handle must be a call's handle".into()))
        }
    }
}

/// `debug_panic(:nif | :list, ref)` panics in the NIF or in a listing thread.
#[cfg(feature = "test-panic")]
#[rustler::nif]
fn debug_panic<'a>(env: Env<'a>, place: Term<'a>, reference: Term<'a>) -> Term<'a> {
    let place = place.decode::<rustler::Atom>().ok();
    if place == Some(atoms::nif()) {
        panic!("debug_panic: panicking inside the NIF on purpose");
    }
    if place != Some(atoms::list()) {
        return encode::error(env, &Error::InvalidRequest("where must be :nif or :list".into()));
    }
    let started = require_ref(reference).and_then(|()| {
        let admission = budget::global().admit(0)?;
        start_list(env, reference, admission, Cancel::new(), |_stats, _helpers| {
            panic!("debug_panic: panicking inside the listing thread on purpose")
        })
    });
    started_or_error(env, started)
}

rustler::init!("Elixir.LibclusterDroplet.Native");
