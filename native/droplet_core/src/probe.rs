//! TCP probes of the candidates before the VM connects to them, in parallel:
//! a black hole costs a timeout, a batch about one per wave.

use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::num::NonZeroU16;
use std::time::{Duration, Instant};

use serde::{de, Deserialize, Deserializer};
use serde_json::{Map, Value};

use crate::cancel::Cancel;
use crate::error::{short, Error};
use crate::pool::{self, Helpers};

/// A thread that only calls `connect` needs little stack.
const PROBE_STACK: usize = 64 * 1024;

/// Probes of one call at once, at most: half the budget's helpers.
pub const MAX_CONCURRENCY: usize = 512;
/// Targets per call: the NIF walks the list on the scheduler.
pub const MAX_TARGETS: usize = 10_000;
/// Longer than any IP literal (47 bytes at most): invalid before it is read.
pub const MAX_ADDRESS_BYTES: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeError {
    Timeout,
    Refused,
    Unreachable,
    InvalidAddress,
    Io(String),
}

pub type ProbeResult = Result<Duration, ProbeError>;

/// A health check, from the NIF's map: its `kind` picks the variant. A new
/// kind is a variant and its arm in [`Check::run`] (and its Elixir module).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Check {
    Tcp {
        port: NonZeroU16,
        #[serde(rename = "timeout_ms", deserialize_with = "millis")]
        timeout: Duration,
    },
}

impl Check {
    /// An error names the field at fault, never its value: serde's messages
    /// quote the value, so the field is found as the one failing alone.
    pub fn from_value(value: &Value) -> Result<Check, Error> {
        let Value::Object(fields) = value else {
            return Err(Error::InvalidRequest("check: must be a map".into()));
        };
        let error = match Check::deserialize(value) {
            Ok(check) => return Ok(check),
            Err(e) => e,
        };
        let fails_alone = |(key, value): &(&String, &Value)| {
            let kind = fields.get("kind").map(|k| ("kind".to_string(), k.clone()));
            let field = ((*key).clone(), (*value).clone());
            let alone: Map<_, _> = kind.into_iter().chain([field]).collect();
            Check::deserialize(&Value::Object(alone))
                .is_err_and(|e| !e.to_string().starts_with("missing field"))
        };
        let detail = match fields.iter().find(fails_alone) {
            Some((key, _)) => format!("check: {key} is invalid"),
            None if error.to_string().starts_with("missing field") => format!("check: {error}"),
            None => "check: invalid".into(),
        };
        Err(Error::InvalidRequest(detail))
    }

    fn run(&self, ip: IpAddr) -> ProbeResult {
        match self {
            Check::Tcp { port, timeout } => probe_one(ip, port.get(), *timeout),
        }
    }
}

/// A timeout in ms, 1 ms to an hour.
fn millis<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let ms = u64::deserialize(d)?;
    let valid = (1..=3_600_000).contains(&ms);
    valid.then(|| Duration::from_millis(ms)).ok_or_else(|| de::Error::custom("out of range"))
}

/// An IP literal, optionally in brackets; never a host name (no DNS wait).
pub fn parse_target(raw: &[u8]) -> Option<IpAddr> {
    if raw.len() > MAX_ADDRESS_BYTES {
        return None;
    }
    let text = std::str::from_utf8(raw).ok()?;
    let text = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')).unwrap_or(text);
    text.parse().ok()
}

pub fn classify(e: &io::Error) -> ProbeError {
    match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => ProbeError::Timeout,
        io::ErrorKind::ConnectionRefused => ProbeError::Refused,
        io::ErrorKind::HostUnreachable
        | io::ErrorKind::NetworkUnreachable
        | io::ErrorKind::AddrNotAvailable => ProbeError::Unreachable,
        _ => ProbeError::Io(short(e.to_string())),
    }
}

pub fn probe_one(ip: IpAddr, port: u16, timeout: Duration) -> ProbeResult {
    // connect_timeout rejects a zero duration outright.
    let timeout = timeout.max(Duration::from_millis(1));
    let started = Instant::now();
    match TcpStream::connect_timeout(&SocketAddr::new(ip, port), timeout) {
        Ok(_stream) => Ok(started.elapsed()),
        Err(e) => Err(classify(&e)),
    }
}

/// Helpers worth asking for: one probe per thread, the caller's included.
pub fn helpers_wanted(targets: usize, concurrency: usize) -> usize {
    concurrency.min(MAX_CONCURRENCY).min(targets).saturating_sub(1)
}

/// Every target checked, in input order; once `cancel` is set no check
/// starts, and `Err(Cancelled)` comes when those in flight end.
pub fn probe_all<T: AsRef<[u8]> + Sync>(
    targets: &[T],
    check: &Check,
    helpers: &dyn Helpers,
    cancel: &Cancel,
) -> Result<Vec<ProbeResult>, Error> {
    let stop = || cancel.is_cancelled();
    let probe = |i: usize| match targets.get(i).and_then(|t| parse_target(t.as_ref())) {
        Some(ip) => check.run(ip),
        None => Err(ProbeError::InvalidAddress),
    };
    let results =
        pool::run_indexed("droplet_probe", targets.len(), helpers, PROBE_STACK, stop, probe);
    // All or none: an item left unstarted was cancelled.
    results.into_iter().collect::<Option<_>>().ok_or(Error::Cancelled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::net::TcpListener;

    /// `probe_all` of a call nobody cancels.
    fn probe(
        targets: &[impl AsRef<[u8]> + Sync],
        port: u16,
        timeout: Duration,
        concurrency: usize,
    ) -> Vec<ProbeResult> {
        let helpers = helpers_wanted(targets.len(), concurrency);
        probe_all(targets, &tcp(port, timeout), &helpers, &Cancel::new()).expect("not cancelled")
    }

    fn tcp(port: u16, timeout: Duration) -> Check {
        Check::Tcp { port: NonZeroU16::new(port).expect("a port"), timeout }
    }

    fn check(value: Value) -> Result<Check, Error> {
        Check::from_value(&value)
    }

    fn invalid(detail: &str) -> Result<Check, Error> {
        Err(Error::InvalidRequest(detail.into()))
    }

    #[test]
    fn a_check_is_read_from_its_map_by_kind() {
        let value = json!({"kind": "tcp", "port": 4000, "timeout_ms": 500});
        assert_eq!(check(value), Ok(tcp(4000, Duration::from_millis(500))));
        let bounds = json!({"kind": "tcp", "port": 65535, "timeout_ms": 3_600_000});
        assert_eq!(check(bounds), Ok(tcp(65535, Duration::from_secs(3600))));
    }

    #[test]
    fn a_bad_check_names_its_field_and_never_a_value() {
        let secret = "dop_v1_0123456789abcdef";
        let cases = [
            (json!({"kind": "tcp", "port": 0, "timeout_ms": 5}), "check: port is invalid"),
            (json!({"kind": "tcp", "port": 65536, "timeout_ms": 5}), "check: port is invalid"),
            (json!({"kind": "tcp", "port": secret, "timeout_ms": 5}), "check: port is invalid"),
            (json!({"kind": "tcp", "port": 1, "timeout_ms": 0}), "check: timeout_ms is invalid"),
            (
                json!({"kind": "tcp", "port": 1, "timeout_ms": 3_600_001}),
                "check: timeout_ms is invalid",
            ),
            (
                json!({"kind": "tcp", "port": 1, "timeout_ms": [secret]}),
                "check: timeout_ms is invalid",
            ),
            (json!({"kind": secret, "port": 1, "timeout_ms": 5}), "check: kind is invalid"),
            (json!({"kind": 7, "port": 1, "timeout_ms": 5}), "check: kind is invalid"),
            (
                json!({"kind": "tcp", "port": 1, "timeout_ms": 5, secret: 1}),
                &format!("check: {secret} is invalid"),
            ),
            (json!({"kind": "tcp", "port": 1}), "check: missing field `timeout_ms`"),
            (json!({"port": 1, "timeout_ms": 5}), "check: missing field `kind`"),
            (json!({}), "check: missing field `kind`"),
            (json!([secret]), "check: must be a map"),
            (json!(secret), "check: must be a map"),
        ];
        for (value, detail) in cases {
            assert_eq!(check(value.clone()), invalid(detail), "{value}");
        }
    }

    #[test]
    fn targets_are_ip_literals_only() {
        assert_eq!(parse_target(b"10.0.0.1"), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(parse_target(b"::1"), Some("::1".parse().unwrap()));
        assert_eq!(parse_target(b"[::1]"), Some("::1".parse().unwrap()));
        let longest = b"[0000:0000:0000:0000:0000:ffff:255.255.255.255]";
        assert!(longest.len() <= MAX_ADDRESS_BYTES);
        assert!(parse_target(longest).is_some());
        let oversize = [b' '; MAX_ADDRESS_BYTES + 1];
        for bad in [
            &oversize[..],
            &b"localhost"[..],
            b"",
            b"10.0.0.256",
            b"10.0.0.1:80",
            b"[::1",
            b"\xff\xfe",
            b" 10.0.0.1",
        ] {
            assert_eq!(parse_target(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn io_errors_are_classified() {
        use io::ErrorKind::*;
        let c = |k| classify(&io::Error::from(k));
        assert_eq!(c(TimedOut), ProbeError::Timeout);
        assert_eq!(c(ConnectionRefused), ProbeError::Refused);
        assert_eq!(c(HostUnreachable), ProbeError::Unreachable);
        assert_eq!(c(NetworkUnreachable), ProbeError::Unreachable);
        assert!(matches!(c(PermissionDenied), ProbeError::Io(_)));
        assert_eq!(classify(&io::Error::from_raw_os_error(113)), ProbeError::Unreachable);
    }

    #[test]
    fn open_refused_and_invalid_targets() {
        let open = TcpListener::bind("127.0.0.1:0").expect("bind");
        let open_port = open.local_addr().expect("addr").port();
        // A port that was just free: bind, read it, close.
        let closed_port = {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let timeout = Duration::from_secs(2);
        let r = probe(&["127.0.0.1", "[127.0.0.1]", "nope"], open_port, timeout, 4);
        assert!(matches!(r[0], Ok(d) if d < timeout));
        assert!(r[1].is_ok());
        assert_eq!(r[2], Err(ProbeError::InvalidAddress));
        let r = probe(&["127.0.0.1"], closed_port, timeout, 4);
        assert_eq!(r, [Err(ProbeError::Refused)]);
        assert!(probe(&[] as &[&str], open_port, timeout, 4).is_empty());
    }

    /// A listener whose accept queue is full: Linux then drops further SYNs,
    /// so connecting to it behaves like a black-holed host.
    pub(crate) fn black_hole() -> (socket2::Socket, Vec<TcpStream>, u16) {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        let addr: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        socket.bind(&addr.into()).expect("bind");
        socket.listen(0).expect("listen");
        let port =
            socket.local_addr().ok().and_then(|a| a.as_socket()).map(|a| a.port()).expect("port");
        let target = SocketAddr::new(addr.ip(), port);
        let mut fillers = Vec::new();
        for _ in 0..8 {
            match TcpStream::connect_timeout(&target, Duration::from_millis(100)) {
                Ok(s) => fillers.push(s),
                Err(_) => break,
            }
        }
        (socket, fillers, port)
    }

    #[test]
    fn black_holes_time_out_in_parallel() {
        let (_listener, _fillers, port) = black_hole();
        let timeout = Duration::from_millis(300);
        let n = 40;
        let targets = vec!["127.0.0.1"; n];
        let started = Instant::now();
        let results = probe(&targets, port, timeout, n);
        let elapsed = started.elapsed();
        let timeouts = results.iter().filter(|r| **r == Err(ProbeError::Timeout)).count();
        // A queue slot may free up as SYNs are retried; nearly all must hang.
        assert!(timeouts >= n - 2, "{results:?}");
        assert!(elapsed < timeout * 3, "took {elapsed:?}");
    }

    #[test]
    fn a_thousand_targets_with_black_holes_take_about_one_timeout() {
        let (_listener, _fillers, hole) = black_hole();
        // Every tenth target is the black hole (127.0.0.1, where the full
        // listener sits); the rest are other loopback addresses where nothing
        // listens on that port, so they are refused at once.
        let targets: Vec<String> = (0..1000)
            .map(|i| {
                if i % 10 == 0 {
                    "127.0.0.1".to_string()
                } else {
                    format!("127.0.{}.{}", 1 + i / 250, 1 + i % 250)
                }
            })
            .collect();
        let timeout = Duration::from_millis(400);
        let started = Instant::now();
        let results = probe(&targets, hole, timeout, 200);
        let elapsed = started.elapsed();
        assert_eq!(results.len(), 1000);
        let timeouts = results.iter().filter(|r| **r == Err(ProbeError::Timeout)).count();
        let refused = results.iter().filter(|r| **r == Err(ProbeError::Refused)).count();
        assert!(timeouts >= 95, "{timeouts} timeouts");
        assert_eq!(refused, 900);
        assert!(elapsed < timeout * 3, "took {elapsed:?}");
    }

    #[test]
    fn helpers_wanted_counts_the_calling_thread_and_the_caps() {
        assert_eq!(helpers_wanted(0, 512), 0);
        assert_eq!(helpers_wanted(1, 512), 0);
        assert_eq!(helpers_wanted(10, 4), 3);
        assert_eq!(helpers_wanted(10, 512), 9);
        assert_eq!(helpers_wanted(5_000, 1_000_000), MAX_CONCURRENCY - 1);
        assert_eq!(helpers_wanted(5_000, 0), 0);
    }

    #[test]
    fn a_cancelled_call_starts_no_new_probe() {
        let (_listener, _fillers, port) = black_hole();
        let timeout = Duration::from_secs(1);
        // 60 black holes two at a time would take 30 timeouts (30 s).
        let targets = vec!["127.0.0.1"; 60];
        let cancel = Cancel::new();
        let canceller = {
            let cancel = cancel.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                cancel.cancel();
            })
        };
        let started = Instant::now();
        let result = probe_all(&targets, &tcp(port, timeout), &1, &cancel);
        let elapsed = started.elapsed();
        canceller.join().expect("canceller");
        assert_eq!(result, Err(Error::Cancelled));
        // The two probes in flight end at their 1 s timeout; half the 30 s
        // of the whole batch leaves a busy machine ample room.
        assert!(elapsed < Duration::from_secs(15), "took {elapsed:?}");
    }

    #[test]
    fn a_call_cancelled_before_it_starts_probes_nothing() {
        let cancel = Cancel::new();
        cancel.cancel();
        let check = tcp(9, Duration::from_secs(30));
        let result = probe_all(&["127.0.0.1"; 5], &check, &0, &cancel);
        assert_eq!(result, Err(Error::Cancelled));
    }
}
