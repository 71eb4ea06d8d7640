//! TCP reachability probes: can we open a connection to each candidate node
//! before asking the VM to connect to it? Black-holed hosts cost a full
//! timeout each, so probes run in parallel and the whole batch costs about
//! one timeout instead of their sum.

use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use crate::error::short;
use crate::pool;

/// A thread that only calls `connect` needs little stack; hundreds of them
/// at the default 2 MiB would reserve needless address space.
const PROBE_STACK: usize = 64 * 1024;

/// Upper bound on probe threads, whatever the caller asks for.
pub const MAX_CONCURRENCY: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeError {
    Timeout,
    Refused,
    Unreachable,
    InvalidAddress,
    Io(String),
}

pub type ProbeResult = Result<Duration, ProbeError>;

/// An IP literal, v4 or v6, optionally in brackets. Never a host name: a
/// probe must not depend on (or wait for) DNS.
pub fn parse_target(raw: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(raw).ok()?;
    let text = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
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

/// Probes every target on `port`, results in input order.
pub fn probe_all<T: AsRef<[u8]> + Sync>(
    targets: &[T],
    port: u16,
    timeout: Duration,
    concurrency: usize,
) -> Vec<ProbeResult> {
    let never = AtomicBool::new(false);
    let concurrency = concurrency.clamp(1, MAX_CONCURRENCY);
    pool::run_indexed(
        "droplet_probe",
        targets.len(),
        concurrency,
        PROBE_STACK,
        &never,
        |i| match targets.get(i).and_then(|t| parse_target(t.as_ref())) {
            Some(ip) => probe_one(ip, port, timeout),
            None => Err(ProbeError::InvalidAddress),
        },
    )
    .into_iter()
    .map(|r| r.unwrap_or_else(|| Err(ProbeError::Io("probe not run".into()))))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn targets_are_ip_literals_only() {
        assert_eq!(parse_target(b"10.0.0.1"), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(parse_target(b"::1"), Some("::1".parse().unwrap()));
        assert_eq!(parse_target(b"[::1]"), Some("::1".parse().unwrap()));
        for bad in [
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
        assert_eq!(
            classify(&io::Error::from_raw_os_error(113)),
            ProbeError::Unreachable
        );
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
        let r = probe_all(&["127.0.0.1", "[127.0.0.1]", "nope"], open_port, timeout, 4);
        assert!(matches!(r[0], Ok(d) if d < timeout));
        assert!(r[1].is_ok());
        assert_eq!(r[2], Err(ProbeError::InvalidAddress));
        let r = probe_all(&["127.0.0.1"], closed_port, timeout, 4);
        assert_eq!(r, [Err(ProbeError::Refused)]);
        assert!(probe_all::<&str>(&[], open_port, timeout, 4).is_empty());
    }

    /// A listener whose accept queue is full: Linux then drops further SYNs,
    /// so connecting to it behaves like a black-holed host.
    pub(crate) fn black_hole() -> (socket2::Socket, Vec<TcpStream>, u16) {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        let addr: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        socket.bind(&addr.into()).expect("bind");
        socket.listen(0).expect("listen");
        let port = socket
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .map(|a| a.port())
            .expect("port");
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
        let results = probe_all(&targets, port, timeout, n);
        let elapsed = started.elapsed();
        let timeouts = results
            .iter()
            .filter(|r| **r == Err(ProbeError::Timeout))
            .count();
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
        let results = probe_all(&targets, hole, timeout, 200);
        let elapsed = started.elapsed();
        assert_eq!(results.len(), 1000);
        let timeouts = results
            .iter()
            .filter(|r| **r == Err(ProbeError::Timeout))
            .count();
        let refused = results
            .iter()
            .filter(|r| **r == Err(ProbeError::Refused))
            .count();
        assert!(timeouts >= 95, "{timeouts} timeouts");
        assert_eq!(refused, 900);
        assert!(elapsed < timeout * 3, "took {elapsed:?}");
    }
}
