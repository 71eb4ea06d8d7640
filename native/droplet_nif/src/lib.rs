//! Erlang NIF glue of libcluster_droplet: decode arguments, start a thread,
//! return at once; the thread does the work with `droplet_core` and sends
//! the caller a message. No network I/O ever happens on a scheduler.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread;
use std::time::Instant;

use droplet_core::api::{list_droplets as core_list, Listing, Stats};
use droplet_core::error::{panic_detail, short};
use droplet_core::select::Selector;
use droplet_core::Error;
use rustler::env::OwnedEnv;
use rustler::{Encoder, Env, Term, TermType};

#[cfg(feature = "test-panic")]
mod debug;
mod decode;
mod encode;

mod atoms {
    rustler::atoms! {
        ok, error, nil,
        droplet_nif_list, droplet_nif_probe,
        // request keys
        api_url, token, tag_name, name, per_page, ca_file, connect_timeout_ms,
        request_timeout_ms, deadline_ms, max_body_bytes, max_pages,
        max_droplets, page_concurrency, keep_alive_ms, select, network, ipv6,
        gpus, only, true_ = "true", false_ = "false",
        // results
        droplets, total, requests, elapsed_us, rate_limit, limit, remaining,
        reset, retry_after, id, status, tags, region, vpc_uuid, v4, v6, address,
        new, active, off, archive, public, private,
        // reasons
        unauthorized, forbidden, rate_limited, http_status, timeout, transport,
        tls, invalid_json, unexpected_shape, inconsistent, foreign_link,
        foreign_redirect, too_many_redirects, pagination_loop, too_many_pages,
        too_many_droplets, body_too_large, invalid_request, no_private_ipv6, spawn, panic,
        tags_unknown,
        refused, unreachable, invalid_address, io,
        // debug_panic
        nif, list,
    }
}

/// The listing thread parses pages and runs TLS handshakes; page workers
/// have their own stacks, so this one needs no more than a modest size.
const LIST_STACK: usize = 1024 * 1024;
/// The probe coordinator only waits for its pool.
const PROBE_STACK: usize = 256 * 1024;

#[rustler::nif]
fn nif_version() -> &'static str {
    droplet_core::VERSION
}

/// Runs `work` on a new thread and sends `encode(env, ref, outcome)` to the
/// calling process. Both steps run under `catch_unwind`: a panic in `work`
/// becomes `Err(Panic)`, and a panic while encoding is retried once as an
/// encoded `Err(Panic)` so the caller still hears back.
fn spawn_reply<R, W, E>(
    env: Env,
    reference: Term,
    thread_name: &str,
    stack_size: usize,
    work: W,
    encode: E,
) -> Result<(), Error>
where
    R: 'static,
    W: FnOnce() -> Result<R, Error> + Send + 'static,
    E: for<'a> Fn(Env<'a>, Term<'a>, Result<R, Error>) -> Term<'a> + Send + 'static,
{
    let pid = env.pid();
    let mut owned = OwnedEnv::new();
    let saved_ref = owned.save(reference);
    thread::Builder::new()
        .name(thread_name.to_string())
        .stack_size(stack_size)
        .spawn(move || {
            let outcome = catch_unwind(AssertUnwindSafe(work))
                .unwrap_or_else(|payload| Err(Error::Panic(panic_detail(payload.as_ref()))));
            let first = catch_unwind(AssertUnwindSafe(|| {
                owned.send_and_clear(&pid, |env| encode(env, saved_ref.load(env), outcome))
            }));
            if first.is_err() {
                let retry = Err(Error::Panic("encoding the result panicked".into()));
                let _ = catch_unwind(AssertUnwindSafe(|| {
                    owned.send_and_clear(&pid, |env| encode(env, saved_ref.load(env), retry))
                }));
            }
            // A failed send means the caller is gone; nobody is left to tell.
        })
        .map(|_detached| ())
        .map_err(|e| Error::Spawn(short(e.to_string())))
}

fn ok_or_error<'a>(env: Env<'a>, result: Result<(), Error>) -> Term<'a> {
    match result {
        Ok(()) => atoms::ok().encode(env),
        Err(e) => encode::error(env, &e),
    }
}

fn require_ref(reference: Term) -> Result<(), Error> {
    if reference.get_type() == TermType::Ref {
        Ok(())
    } else {
        Err(Error::InvalidRequest("ref must be a reference".into()))
    }
}

type ListOutcome = (Listing, Option<Selector>);

/// The listing thread, shared by real listings and `debug_panic(:list)` so
/// the panic path tested is the one real listings take.
fn spawn_list<W>(env: Env, reference: Term, work: W) -> Result<(), Error>
where
    W: FnOnce(&Stats) -> Result<ListOutcome, Error> + Send + 'static,
{
    let started = Instant::now();
    let stats = Arc::new(Stats::default());
    let for_work = stats.clone();
    spawn_reply(
        env,
        reference,
        "droplet_list",
        LIST_STACK,
        move || work(&for_work),
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

/// `list_droplets(request, ref) :: :ok | {:error, reason}`; the result comes
/// as `{:droplet_nif_list, ref, result, info}`.
#[rustler::nif]
fn list_droplets<'a>(env: Env<'a>, request: Term<'a>, reference: Term<'a>) -> Term<'a> {
    let started = require_ref(reference)
        .and_then(|()| decode::list_args(request))
        .and_then(|args| {
            spawn_list(env, reference, move |stats| {
                let select = args
                    .select
                    .map(|(network, ipv6)| Selector::new(network, ipv6))
                    .transpose()?;
                let listing = core_list(&args.request, stats)?;
                Ok((listing, select))
            })
        });
    ok_or_error(env, started)
}

/// `probe(addresses, port, timeout_ms, concurrency, ref) :: :ok | {:error, reason}`;
/// the results come as `{:droplet_nif_probe, ref, [{address, outcome}]}`.
#[rustler::nif]
fn probe<'a>(
    env: Env<'a>,
    addresses: Term<'a>,
    port: Term<'a>,
    timeout_ms: Term<'a>,
    concurrency: Term<'a>,
    reference: Term<'a>,
) -> Term<'a> {
    let started = require_ref(reference)
        .and_then(|()| decode::probe_args(addresses, port, timeout_ms, concurrency))
        .and_then(|args| {
            let args = Arc::new(args);
            let for_work = args.clone();
            spawn_reply(
                env,
                reference,
                "droplet_probe",
                PROBE_STACK,
                move || {
                    Ok(droplet_core::probe::probe_all(
                        &for_work.addresses,
                        for_work.port,
                        for_work.timeout,
                        for_work.concurrency,
                    ))
                },
                move |env, reference, outcome| {
                    let results = match &outcome {
                        Ok(results) => encode::probe_results(env, &args.addresses, results),
                        Err(e) => encode::error(env, e),
                    };
                    (atoms::droplet_nif_probe(), reference, results).encode(env)
                },
            )
        });
    ok_or_error(env, started)
}

/// Test builds only: `debug_panic(:nif, ref)` panics in the NIF itself
/// (rustler turns that into an `:nif_panicked` exception in the caller);
/// `debug_panic(:list, ref)` panics inside a listing thread.
#[cfg(feature = "test-panic")]
#[rustler::nif]
fn debug_panic<'a>(env: Env<'a>, place: Term<'a>, reference: Term<'a>) -> Term<'a> {
    let place = place.decode::<rustler::Atom>().ok();
    if place == Some(atoms::nif()) {
        panic!("debug_panic: panicking inside the NIF on purpose");
    }
    if place != Some(atoms::list()) {
        return encode::error(
            env,
            &Error::InvalidRequest("where must be :nif or :list".into()),
        );
    }
    let started = require_ref(reference).and_then(|()| {
        spawn_list(env, reference, |_stats| {
            panic!("debug_panic: panicking inside the listing thread on purpose")
        })
    });
    ok_or_error(env, started)
}

rustler::init!("Elixir.LibclusterDroplet.Native");
