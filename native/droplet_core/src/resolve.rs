//! Host names resolved on a small fixed pool of threads, each lookup within
//! the request's own timeout.
//!
//! A lookup (`getaddrinfo`) cannot be interrupted. ureq's own resolver,
//! given a timeout, runs each one on a new thread and stops waiting at the
//! timeout, but the thread lives on until the lookup ends: under slow DNS,
//! every listing left one behind (640 after 20 rounds of 32 listings). Here
//! at most [`DNS_THREADS`] lookups run at once in the whole process, at most
//! [`DNS_QUEUE`] wait for them, a lookup whose caller has given up is never
//! started, and a pool thread idle for [`DNS_IDLE`] ends. So the threads
//! outside the NIF's budget (`crate::budget`) number at most `DNS_THREADS`,
//! and a lookup the OS holds ties up one of them, not one per call, for as
//! long as the OS resolver's own timeouts run.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use once_cell::sync::Lazy;
use ureq::config::Config;
use ureq::http::Uri;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::NextTimeout;

/// Lookups running at once, process-wide.
pub const DNS_THREADS: usize = 4;
/// Lookups waiting for a thread; one more fails at once.
pub const DNS_QUEUE: usize = 64;
/// How long a pool thread waits for work before it ends.
pub const DNS_IDLE: Duration = Duration::from_secs(10);
/// Not `droplet_*`, the names of the threads the budget counts.
pub const DNS_THREAD_NAME: &str = "libcluster_dns";
/// `getaddrinfo` with glibc's NSS modules wants more than a probe's stack.
const DNS_STACK: usize = 256 * 1024;

type Addrs = io::Result<Vec<SocketAddr>>;
type Lookup = dyn Fn(&str) -> Addrs + Send + Sync;

/// Why a lookup was not answered.
#[derive(Debug)]
pub enum Unresolved {
    /// The caller's time ran out first.
    Timeout,
    Failed(io::Error),
}

/// Every pool thread busy and [`DNS_QUEUE`] lookups waiting already.
#[derive(Debug)]
pub struct Backlog;

impl fmt::Display for Backlog {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "more than {DNS_QUEUE} DNS lookups waiting")
    }
}

impl std::error::Error for Backlog {}

struct Job {
    host_port: String,
    deadline: Instant,
    reply: mpsc::SyncSender<Addrs>,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    threads: usize,
    idle: usize,
}

pub struct Pool {
    name: &'static str,
    lookup: Box<Lookup>,
    max_threads: usize,
    max_queued: usize,
    idle: Duration,
    queue: Mutex<Queue>,
    work: Condvar,
}

impl Pool {
    pub fn new(
        name: &'static str,
        lookup: Box<Lookup>,
        max_threads: usize,
        max_queued: usize,
        idle: Duration,
    ) -> Arc<Pool> {
        Arc::new(Pool {
            name,
            lookup,
            max_threads,
            max_queued,
            idle,
            queue: Mutex::default(),
            work: Condvar::new(),
        })
    }

    /// The addresses of `host_port` (`host:port`), waiting at most `wait`.
    pub fn resolve(
        self: &Arc<Pool>,
        host_port: &str,
        wait: Duration,
    ) -> Result<Vec<SocketAddr>, Unresolved> {
        // A literal needs no lookup (and no thread).
        if let Ok(addr) = host_port.parse::<SocketAddr>() {
            return Ok(vec![addr]);
        }
        let now = Instant::now();
        let (reply, answer) = mpsc::sync_channel(1);
        self.enqueue(Job {
            host_port: host_port.to_string(),
            deadline: now.checked_add(wait).unwrap_or(now),
            reply,
        })
        .map_err(Unresolved::Failed)?;
        match answer.recv_timeout(wait) {
            Ok(addrs) => addrs.map_err(Unresolved::Failed),
            Err(RecvTimeoutError::Timeout) => Err(Unresolved::Timeout),
            Err(RecvTimeoutError::Disconnected) => Err(Unresolved::Failed(io::Error::other(
                "the DNS lookup thread ended without an answer",
            ))),
        }
    }

    fn enqueue(self: &Arc<Pool>, job: Job) -> io::Result<()> {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if queue.jobs.len() >= self.max_queued {
            // Those whose callers have given up hold no place.
            let now = Instant::now();
            queue.jobs.retain(|j| j.deadline > now);
            if queue.jobs.len() >= self.max_queued {
                return Err(io::Error::other(Backlog));
            }
        }
        queue.jobs.push_back(job);
        if queue.idle == 0 && queue.threads < self.max_threads {
            let pool = Arc::clone(self);
            let spawned = thread::Builder::new()
                .name(self.name.to_string())
                .stack_size(DNS_STACK)
                .spawn(move || pool.serve());
            match spawned {
                Ok(_) => queue.threads += 1,
                // Another thread will take the job; with none, it fails.
                Err(e) if queue.threads == 0 => {
                    queue.jobs.pop_back();
                    return Err(e);
                }
                Err(_) => {}
            }
        }
        drop(queue);
        self.work.notify_one();
        Ok(())
    }

    /// A pool thread: lookups until none has come for `idle`.
    fn serve(&self) {
        loop {
            let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            let job = loop {
                if let Some(job) = queue.jobs.pop_front() {
                    break job;
                }
                queue.idle += 1;
                let (q, waited) = self
                    .work
                    .wait_timeout(queue, self.idle)
                    .unwrap_or_else(|e| e.into_inner());
                queue = q;
                queue.idle -= 1;
                if waited.timed_out() && queue.jobs.is_empty() {
                    queue.threads -= 1;
                    return;
                }
            };
            drop(queue);
            if Instant::now() < job.deadline {
                // The caller may have gone meanwhile: nobody to tell.
                let _ = job.reply.try_send((self.lookup)(&job.host_port));
            }
        }
    }

    /// Pool threads alive now.
    pub fn threads(&self) -> usize {
        self.queue.lock().map_or(0, |q| q.threads)
    }
}

/// Test builds of the NIF only: every lookup of the process pool takes this
/// long first, as under slow DNS.
#[cfg(feature = "test-hooks")]
pub static DNS_DELAY_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn system_lookup(host_port: &str) -> Addrs {
    #[cfg(feature = "test-hooks")]
    thread::sleep(Duration::from_millis(
        DNS_DELAY_MS.load(std::sync::atomic::Ordering::Relaxed),
    ));
    host_port.to_socket_addrs().map(Iterator::collect)
}

/// The process's pool, which every agent resolves on.
pub fn global() -> &'static Arc<Pool> {
    static POOL: Lazy<Arc<Pool>> = Lazy::new(|| {
        Pool::new(
            DNS_THREAD_NAME,
            Box::new(system_lookup),
            DNS_THREADS,
            DNS_QUEUE,
            DNS_IDLE,
        )
    });
    &POOL
}

/// ureq's [`Resolver`] on the process pool.
#[derive(Debug)]
pub struct PoolResolver;

impl Resolver for PoolResolver {
    fn resolve(
        &self,
        uri: &Uri,
        config: &Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let host_port = uri
            .scheme()
            .zip(uri.authority())
            .and_then(|(scheme, authority)| DefaultResolver::host_and_port(scheme, authority))
            .ok_or_else(|| ureq::Error::BadUri(uri.to_string()))?;
        // Our agents always set a timeout; without one, still not forever.
        let wait = timeout.not_zero().map_or(DNS_IDLE, |d| *d);
        let addrs = global().resolve(&host_port, wait).map_err(|e| match e {
            Unresolved::Timeout => ureq::Error::Timeout(timeout.reason),
            Unresolved::Failed(e) => ureq::Error::Io(e),
        })?;
        let mut resolved = self.empty();
        let family = config.ip_family();
        let mut wanted = family.keep_wanted(addrs.into_iter());
        // As many as ureq keeps; the rest are dropped, as its own resolver does.
        while wanted.next().is_some_and(|a| resolved.try_push(a).is_ok()) {}
        match resolved.is_empty() {
            true => Err(ureq::Error::HostNotFound),
            false => Ok(resolved),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Threads of this process named `name`, from `/proc/self/task`.
    pub(crate) fn threads_named(name: &str) -> usize {
        let tasks = std::fs::read_dir("/proc/self/task").expect("/proc/self/task");
        tasks
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
            .filter(|comm| comm.trim_end() == name)
            .count()
    }

    /// Lookups that hang until `open` is set, as under DNS that never
    /// answers, counting how many were started.
    struct Gate {
        open: Mutex<bool>,
        opened: Condvar,
        started: AtomicUsize,
    }

    fn gated(name: &'static str, threads: usize, queued: usize) -> (Arc<Pool>, Arc<Gate>) {
        let gate = Arc::new(Gate {
            open: Mutex::new(false),
            opened: Condvar::new(),
            started: AtomicUsize::new(0),
        });
        let g = gate.clone();
        let lookup = move |_: &str| -> Addrs {
            g.started.fetch_add(1, Ordering::SeqCst);
            let mut open = g.open.lock().unwrap_or_else(|e| e.into_inner());
            while !*open {
                open = g.opened.wait(open).unwrap_or_else(|e| e.into_inner());
            }
            Ok(vec!["10.0.0.1:443".parse().expect("addr")])
        };
        let idle = Duration::from_millis(50);
        (
            Pool::new(name, Box::new(lookup), threads, queued, idle),
            gate,
        )
    }

    fn open(gate: &Gate) {
        *gate.open.lock().unwrap_or_else(|e| e.into_inner()) = true;
        gate.opened.notify_all();
    }

    /// Polls `done` until it holds; fails after a minute, which only a
    /// broken pool ever takes.
    fn eventually(done: impl Fn() -> bool) {
        let until = Instant::now() + Duration::from_secs(60);
        while !done() {
            assert!(Instant::now() < until, "never happened");
            thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn lookups_that_never_answer_hold_the_pool_threads_and_no_more() {
        let (pool, gate) = gated("dns_t_hang", 3, 64);
        let callers: Vec<_> = (0..40)
            .map(|_| {
                let pool = pool.clone();
                thread::spawn(move || pool.resolve("slow.test:443", Duration::from_millis(100)))
            })
            .collect();
        for caller in callers {
            let outcome = caller.join().expect("caller");
            assert!(matches!(outcome, Err(Unresolved::Timeout)), "{outcome:?}");
        }
        // Every caller gave up; three lookups hang, on the pool's three
        // threads, and the 37 others were never started.
        assert_eq!(gate.started.load(Ordering::SeqCst), 3);
        assert_eq!((pool.threads(), threads_named("dns_t_hang")), (3, 3));
        // Once they answer, the queue's expired lookups are skipped and the
        // idle threads end.
        open(&gate);
        eventually(|| pool.threads() == 0 && threads_named("dns_t_hang") == 0);
        assert_eq!(gate.started.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn a_full_queue_refuses_at_once_but_makes_room_for_the_expired() {
        let (pool, gate) = gated("dns_t_queue", 1, 2);
        let wait = |pool: &Arc<Pool>| {
            let pool = pool.clone();
            thread::spawn(move || pool.resolve("slow.test:443", Duration::from_secs(600)))
        };
        let queued = |pool: &Arc<Pool>| pool.queue.lock().map_or(0, |q| q.jobs.len());
        // One lookup running, then two waiting: the queue is full.
        let mut waiting = vec![wait(&pool)];
        eventually(|| gate.started.load(Ordering::SeqCst) == 1);
        waiting.extend([wait(&pool), wait(&pool)]);
        eventually(|| queued(&pool) == 2);
        match pool.resolve("other.test:443", Duration::from_secs(600)) {
            Err(Unresolved::Failed(e)) => assert!(e.get_ref().is_some_and(|i| i.is::<Backlog>())),
            other => panic!("{other:?}"),
        }
        open(&gate);
        for w in waiting {
            assert_eq!(w.join().expect("caller").map(|a| a.len()).ok(), Some(1));
        }
        // Expired lookups hold no place: one running and two queued that
        // gave up leave room for a fourth.
        let (pool, gate) = gated("dns_t_expire", 1, 2);
        for _ in 0..4 {
            let outcome = pool.resolve("slow.test:443", Duration::from_millis(20));
            assert!(matches!(outcome, Err(Unresolved::Timeout)), "{outcome:?}");
        }
        open(&gate);
    }

    #[test]
    fn literals_need_no_lookup_and_names_get_their_answer() {
        let (pool, gate) = gated("dns_t_lit", 2, 4);
        for literal in ["127.0.0.1:80", "[::1]:443"] {
            let addrs = pool.resolve(literal, Duration::from_secs(1)).ok();
            assert_eq!(addrs, Some(vec![literal.parse().expect("addr")]));
        }
        assert_eq!(
            (gate.started.load(Ordering::SeqCst), pool.threads()),
            (0, 0)
        );
        open(&gate);
        let addrs = pool.resolve("name.test:443", Duration::from_secs(600)).ok();
        assert_eq!(addrs, Some(vec!["10.0.0.1:443".parse().expect("addr")]));
        // The real pool, on the real resolver.
        let local = global().resolve("localhost:80", Duration::from_secs(600));
        assert!(local.is_ok_and(|a| a.iter().all(|a| a.ip().is_loopback())));
    }
}
