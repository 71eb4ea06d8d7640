//! Test builds only (feature `test-panic`): how long a NIF call holds its
//! scheduler thread, net of OS preemption (Linux's schedstat); the thread
//! budget read and filled; DNS lookups made slow.

use std::cell::RefCell;
use std::fs::File;
use std::hint::black_box;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use droplet_core::budget::{self, Admission};
use rustler::{Atom, Encoder, Env, ResourceArc, Term};

mod atoms {
    rustler::atoms! { error, ok, spin, sleep }
}

/// `debug_budget() :: {calls_in_flight, helpers_in_use}`.
#[rustler::nif]
fn debug_budget() -> (usize, usize) {
    let budget = budget::global();
    (budget.calls_in_flight(), budget.helpers_in_use())
}

/// An admission held until `debug_release/1` or garbage collection.
struct HeldAdmission(Mutex<Option<Admission<'static>>>);

#[rustler::resource_impl]
impl rustler::Resource for HeldAdmission {}

/// `debug_admit(helpers) :: {:ok, held, granted} | {:error, :busy}`: a call
/// admitted as a real one, that runs nothing.
#[rustler::nif]
fn debug_admit(env: Env, helpers: usize) -> Term {
    match budget::global().admit(helpers) {
        Ok(admission) => {
            let granted = admission.floor;
            let held = ResourceArc::new(HeldAdmission(Mutex::new(Some(admission))));
            (atoms::ok(), held, granted).encode(env)
        }
        Err(e) => crate::encode::error(env, &e),
    }
}

/// `debug_release(held) :: :ok`: gives back what `debug_admit/1` took.
#[rustler::nif]
fn debug_release(held: ResourceArc<HeldAdmission>) -> Atom {
    let mut slot = held.0.lock().unwrap_or_else(|e| e.into_inner());
    slot.take();
    atoms::ok()
}

/// `debug_dns_delay(ms) :: :ok`: every DNS lookup takes `ms` first.
#[rustler::nif]
fn debug_dns_delay(ms: u64) -> Atom {
    use std::sync::atomic::Ordering;
    droplet_core::resolve::DNS_DELAY_MS.store(ms, Ordering::Relaxed);
    atoms::ok()
}

/// Monotonic nanoseconds since the first call in this VM.
fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// The calling thread's id, from the `/proc/thread-self` link (`<pid>/task/<tid>`).
fn thread_id() -> io::Result<u64> {
    let link = std::fs::read_link("/proc/thread-self")?;
    link.file_name()
        .and_then(|name| name.to_str())
        .and_then(|name| name.parse().ok())
        .ok_or_else(|| io::Error::other(format!("unexpected /proc/thread-self: {link:?}")))
}

thread_local! {
    /// This thread's schedstat file, opened once: a reading is then one pread.
    static SCHEDSTAT: RefCell<Option<File>> = const { RefCell::new(None) };
}

/// The thread's ns on a CPU (updated at scheduler events only) and ns
/// runnable but waiting for one.
fn schedstat() -> io::Result<(u64, u64)> {
    SCHEDSTAT.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(File::open("/proc/thread-self/schedstat")?);
        }
        let file = slot.as_ref().ok_or_else(|| io::Error::other("schedstat not open"))?;
        let mut buf = [0u8; 128];
        let n = file.read_at(&mut buf, 0)?;
        let text = std::str::from_utf8(&buf[..n]).map_err(io::Error::other)?;
        let mut fields = text.split_ascii_whitespace().map(str::parse::<u64>);
        match (fields.next(), fields.next()) {
            (Some(Ok(run)), Some(Ok(wait))) => Ok((run, wait)),
            _ => Err(io::Error::other(format!("unexpected schedstat: {text:?}"))),
        }
    })
}

/// `debug_thread_times() :: {tid, now_ns, wait_ns} | {:error, binary}`: the
/// wait as of the clock reading, read before and after it until both agree
/// (a wait is added when the thread gets a CPU back).
#[rustler::nif]
fn debug_thread_times(env: Env) -> Term {
    let sample = thread_id().and_then(|tid| {
        for _ in 0..1_000 {
            let (_, before) = schedstat()?;
            let now = now_ns();
            let (_, after) = schedstat()?;
            if before == after {
                return Ok((tid, now, before));
            }
        }
        Err(io::Error::other("the thread was preempted in every reading"))
    });
    match sample {
        Ok(sample) => sample.encode(env),
        Err(e) => (atoms::error(), e.to_string()).encode(env),
    }
}

/// `debug_hold(:spin | :sleep, ms) :: :ok | {:error, binary}`: holds the
/// scheduler for `ms` of CPU time or of sleep, as positive controls.
#[rustler::nif]
fn debug_hold(env: Env, kind: Atom, ms: u64) -> Term {
    let held = if kind == atoms::sleep() {
        thread::sleep(Duration::from_millis(ms));
        Ok(())
    } else if kind == atoms::spin() {
        spin(ms.saturating_mul(1_000_000))
    } else {
        Err(io::Error::other("kind must be :spin or :sleep"))
    };
    match held {
        Ok(()) => atoms::ok().encode(env),
        Err(e) => (atoms::error(), e.to_string()).encode(env),
    }
}

fn spin(cpu_ns: u64) -> io::Result<()> {
    let (start, _) = schedstat()?;
    let mut x = 0u64;
    loop {
        for i in 0..10_000u64 {
            x = black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(i));
        }
        let (run, _) = schedstat()?;
        if run.saturating_sub(start) >= cpu_ns {
            return Ok(());
        }
    }
}
