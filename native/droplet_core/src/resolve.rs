//! Host names resolved on a fixed pool of threads for the whole process,
//! not on a thread per lookup as ureq's resolver does (`native/README.md`).

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use once_cell::sync::Lazy;
use ureq::config::Config;
use ureq::http::Uri;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::NextTimeout;

/// Named `libcluster_dns`, not `droplet_*` like the threads the budget counts.
pub const DNS_THREADS: usize = 4;
pub const DNS_QUEUE: usize = 64;

type Addrs = io::Result<Vec<SocketAddr>>;
type Lookup = dyn Fn(&str) -> Addrs + Send + Sync;

pub const BACKLOG: &str = "more than 64 DNS lookups waiting";

struct Job {
    host_port: String,
    deadline: Option<Instant>,
    reply: SyncSender<Addrs>,
}

pub struct Pool {
    jobs: SyncSender<Job>,
}

impl Pool {
    pub fn new(name: &str, threads: usize, queue: usize, lookup: Box<Lookup>) -> Pool {
        let (jobs, waiting) = mpsc::sync_channel::<Job>(queue);
        let (waiting, lookup) = (Arc::new(Mutex::new(waiting)), Arc::<Lookup>::from(lookup));
        for _ in 0..threads {
            let (waiting, lookup) = (waiting.clone(), lookup.clone());
            // With no thread at all, every lookup times out.
            let _ = thread::Builder::new()
                .name(name.to_string())
                .stack_size(256 * 1024)
                .spawn(move || serve(&waiting, &*lookup));
        }
        Pool { jobs }
    }

    /// The addresses of `host:port`, waiting at most `wait`.
    pub fn resolve(&self, host_port: &str, wait: Duration) -> Addrs {
        // A literal needs no lookup.
        if let Ok(addr) = host_port.parse::<SocketAddr>() {
            return Ok(vec![addr]);
        }
        let (reply, answer) = mpsc::sync_channel(1);
        let deadline = Instant::now().checked_add(wait);
        let job = Job { host_port: host_port.to_string(), deadline, reply };
        self.jobs.try_send(job).map_err(|_| io::Error::other(BACKLOG))?;
        answer.recv_timeout(wait).unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
    }
}

/// A pool thread: the next job whose caller still waits, forever.
fn serve(waiting: &Mutex<Receiver<Job>>, lookup: &Lookup) {
    loop {
        let job = match waiting.lock().map(|w| w.recv()) {
            Ok(Ok(job)) => job,
            _ => return,
        };
        if job.deadline.is_none_or(|d| Instant::now() < d) {
            // The caller may have gone meanwhile: nobody to tell.
            let _ = job.reply.send(lookup(&job.host_port));
        }
    }
}

/// NIF test builds only: every lookup takes this long first (slow DNS).
#[cfg(feature = "test-hooks")]
pub static DNS_DELAY_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn system_lookup(host_port: &str) -> Addrs {
    #[cfg(feature = "test-hooks")]
    thread::sleep(Duration::from_millis(DNS_DELAY_MS.load(std::sync::atomic::Ordering::Relaxed)));
    host_port.to_socket_addrs().map(Iterator::collect)
}

/// The process's pool, which every agent resolves on.
pub fn global() -> &'static Pool {
    static POOL: Lazy<Pool> =
        Lazy::new(|| Pool::new("libcluster_dns", DNS_THREADS, DNS_QUEUE, Box::new(system_lookup)));
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
        // Our agents always set a timeout.
        let wait = timeout.not_zero().map_or(Duration::from_secs(60), |d| *d);
        let addrs = global().resolve(&host_port, wait).map_err(ureq::Error::Io)?;
        let mut resolved = self.empty();
        let family = config.ip_family();
        let mut wanted = family.keep_wanted(addrs.into_iter());
        while wanted.next().is_some_and(|a| resolved.try_push(a).is_ok()) {}
        match resolved.is_empty() {
            true => Err(ureq::Error::HostNotFound),
            false => Ok(resolved),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Condvar;

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
    #[derive(Default)]
    struct Gate {
        open: Mutex<bool>,
        opened: Condvar,
        started: AtomicUsize,
    }

    impl Gate {
        fn open(&self) {
            *self.open.lock().unwrap_or_else(|e| e.into_inner()) = true;
            self.opened.notify_all();
        }

        fn started(&self) -> usize {
            self.started.load(Ordering::SeqCst)
        }
    }

    fn gated(name: &str, threads: usize, queue: usize) -> (Arc<Pool>, Arc<Gate>) {
        let gate = Arc::new(Gate::default());
        let g = gate.clone();
        let lookup = move |_: &str| -> Addrs {
            g.started.fetch_add(1, Ordering::SeqCst);
            let mut open = g.open.lock().unwrap_or_else(|e| e.into_inner());
            while !*open {
                open = g.opened.wait(open).unwrap_or_else(|e| e.into_inner());
            }
            Ok(vec!["10.0.0.1:443".parse().expect("addr")])
        };
        (Arc::new(Pool::new(name, threads, queue, Box::new(lookup))), gate)
    }

    const LONG: Duration = Duration::from_secs(600);

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
            assert!(
                matches!(&outcome, Err(e) if e.kind() == io::ErrorKind::TimedOut),
                "{outcome:?}"
            );
        }
        // Every caller gave up; three lookups hang on the pool's three
        // threads, and the 37 others were never started.
        assert_eq!((gate.started(), threads_named("dns_t_hang")), (3, 3));
        // Once they answer, the queued lookups nobody waits for are skipped:
        // the next one is the fourth started.
        gate.open();
        assert!(pool.resolve("next.test:443", LONG).is_ok());
        assert_eq!((gate.started(), threads_named("dns_t_hang")), (4, 3));
    }

    #[test]
    fn a_full_queue_refuses_at_once() {
        let (pool, gate) = gated("dns_t_queue", 1, 2);
        let first = {
            let pool = pool.clone();
            thread::spawn(move || pool.resolve("slow.test:443", LONG))
        };
        while gate.started() == 0 {
            thread::sleep(Duration::from_millis(1));
        }
        // One lookup running; two given up on, still queued: the queue is full.
        for _ in 0..2 {
            let outcome = pool.resolve("slow.test:443", Duration::from_millis(1));
            assert!(
                matches!(&outcome, Err(e) if e.kind() == io::ErrorKind::TimedOut),
                "{outcome:?}"
            );
        }
        let backlog = pool.resolve("other.test:443", LONG).map_err(|e| e.to_string());
        assert_eq!(backlog, Err(BACKLOG.to_string()));
        gate.open();
        assert_eq!(first.join().expect("caller").map(|a| a.len()).ok(), Some(1));
        assert_eq!(gate.started(), 1);
    }

    #[test]
    fn literals_need_no_lookup_and_names_get_their_answer() {
        let (pool, gate) = gated("dns_t_lit", 2, 4);
        for literal in ["127.0.0.1:80", "[::1]:443"] {
            let addrs = pool.resolve(literal, Duration::from_secs(1)).ok();
            assert_eq!(addrs, Some(vec![literal.parse().expect("addr")]));
        }
        assert_eq!(gate.started(), 0);
        gate.open();
        let addrs = pool.resolve("name.test:443", LONG).ok();
        assert_eq!(addrs, Some(vec!["10.0.0.1:443".parse().expect("addr")]));
        // The real pool, on the real resolver.
        let local = global().resolve("localhost:80", LONG);
        assert!(local.is_ok_and(|a| a.iter().all(|a| a.ip().is_loopback())));
    }
}
