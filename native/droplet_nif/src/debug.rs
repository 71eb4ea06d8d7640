//! Test builds only (the `test-panic` feature, compiled in for MIX_ENV=test):
//! NIFs that let the Elixir tests measure how long a NIF call holds the
//! scheduler thread it runs on, net of the time the OS kept that thread
//! off a CPU (Linux only: they read `/proc/thread-self/schedstat`), and
//! NIFs that read and take the thread budget's permits, and one that makes
//! DNS lookups slow.

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

/// `debug_budget() :: {calls_in_flight, helpers_in_use}`: the global budget's
/// accounting right now.
#[rustler::nif]
fn debug_budget() -> (usize, usize) {
    let budget = budget::global();
    (budget.calls_in_flight(), budget.helpers_in_use())
}

/// A call slot and helper permits taken from the budget by a test, held
/// until `debug_release/1` or until the handle is garbage collected.
struct HeldAdmission(Mutex<Option<Admission<'static>>>);

#[rustler::resource_impl]
impl rustler::Resource for HeldAdmission {}

/// `debug_admit(helpers) :: {:ok, held, granted} | {:error, :busy}`: admits
/// a call that runs nothing, exactly as a real call would be admitted, so a
/// test can fill the budget without starting threads.
#[rustler::nif]
fn debug_admit(env: Env, helpers: usize) -> Term {
    match budget::global().admit(helpers) {
        Ok(admission) => {
            let granted = admission.helpers();
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

/// `debug_dns_delay(ms) :: :ok`: every DNS lookup of the process pool
/// takes `ms` first from now on, as under slow DNS (0 turns it off).
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

/// The calling thread's `schedstat`: ns spent on a CPU (only brought up to
/// date at scheduler events, so it lags while the thread runs on) and ns
/// spent runnable but waiting for a CPU (preempted, or not yet picked).
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
/// calling thread's id, the monotonic clock, and the thread's run-queue wait
/// so far, exactly as of that clock reading. The wait is read before and
/// after the clock and the reading retried until both agree: a wait is
/// added when the thread gets a CPU back, so agreement means no wait ended
/// in between, and the value holds at the clock reading.
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
/// calling (normal) scheduler on purpose, computing until the thread has
/// had `ms` of CPU time, or sleeping `ms` as blocking I/O would. The
/// positive controls of the scheduler test.
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
