//! The real transport: one GET with ureq, no redirects followed (the caller
//! decides where the token may go), TLS always verified, connections kept
//! alive between listings.

use std::collections::HashMap;
use std::io;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use once_cell::sync::Lazy;
use ureq::tls::{RootCerts, TlsConfig};
use ureq::unversioned::transport::DefaultConnector;
use ureq::Agent;

use crate::api::ListRequest;
use crate::ca::roots_with_extra_ca;
use crate::error::Error;
use crate::ratelimit::RateLimit;
use crate::redact::Secret;
use crate::resolve::{PoolResolver, BACKLOG};
use crate::scope::MAX_FORBIDDEN_BODY;
use crate::transport::{Exchange, Transport};

/// Agents are reused for kept-alive connections and resumed TLS sessions;
/// ureq keeps those only for agent-level settings, hence the whole key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct AgentKey {
    ca_file: Option<String>,
    connect_timeout: Duration,
    request_timeout: Duration,
    keep_alive: Duration,
}

/// Each with the identity its CA file had when read; at most `MAX_AGENTS`
/// against a caller cycling through CA files.
static AGENTS: Lazy<Mutex<HashMap<AgentKey, Cached>>> = Lazy::new(Mutex::default);
type Cached = (Option<FileId>, Agent);

const MAX_AGENTS: usize = 32;

/// What tells a CA file rewritten or replaced from the one read.
type FileId = (u64, Option<std::time::SystemTime>, [i64; 4]);

fn file_id(path: &str) -> Option<FileId> {
    let m = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let unix = {
        use std::os::unix::fs::MetadataExt;
        [m.dev() as i64, m.ino() as i64, m.ctime(), m.ctime_nsec()]
    };
    #[cfg(not(unix))]
    let unix = [0; 4];
    Some((m.len(), m.modified().ok(), unix))
}

/// A cached agent while its CA file is the one it read.
fn agent_for(key: AgentKey, deadline: Option<Instant>) -> Result<Agent, Error> {
    let id = key.ca_file.as_deref().and_then(file_id);
    // Poisoned only by a panic mid-insert: the map is still a valid cache.
    if let Some((read, agent)) = AGENTS.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        if *read == id {
            return Ok(agent.clone());
        }
    }
    // Built outside the lock: reading a CA file must not stall other callers.
    let agent = build_agent(&key, deadline)?;
    let mut agents = AGENTS.lock().unwrap_or_else(|e| e.into_inner());
    if agents.len() >= MAX_AGENTS && !agents.contains_key(&key) {
        agents.clear();
    }
    agents.insert(key, (id, agent.clone()));
    Ok(agent)
}

fn build_agent(key: &AgentKey, deadline: Option<Instant>) -> Result<Agent, Error> {
    let roots = match &key.ca_file {
        None => RootCerts::WebPki,
        Some(path) => RootCerts::new_with_certs(&roots_with_extra_ca(path, deadline)?),
    };
    let config = Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_connect(Some(key.connect_timeout))
        .timeout_global(Some(key.request_timeout))
        .max_idle_connections_per_host(8)
        .max_idle_age(key.keep_alive)
        .user_agent(format!("libcluster_droplet/{}", crate::VERSION))
        .accept("application/json")
        .tls_config(TlsConfig::builder().root_certs(roots).build())
        .build();
    Ok(Agent::with_parts(config, DefaultConnector::default(), PoolResolver))
}

type Response = ureq::http::Response<ureq::Body>;

#[derive(Debug)]
pub struct UreqTransport<'r> {
    agent: Agent,
    authorization: Secret,
    req: &'r ListRequest,
}

impl UreqTransport<'_> {
    pub fn new(req: &ListRequest, deadline: Option<Instant>) -> Result<UreqTransport<'_>, Error> {
        let key = AgentKey {
            ca_file: req.ca_file.clone(),
            connect_timeout: req.connect_timeout,
            request_timeout: req.request_timeout,
            keep_alive: req.keep_alive,
        };
        let authorization = Secret(format!("Bearer {}", req.token.0));
        Ok(UreqTransport { agent: agent_for(key, deadline)?, authorization, req })
    }

    fn call(&self, url: &str, timeout: Duration) -> Result<Response, ureq::Error> {
        let request = self.agent.get(url).header("Authorization", self.authorization.0.as_str());
        // A shorter budget than the agent's only near the deadline (`AgentKey`).
        if timeout < self.req.request_timeout {
            request
                .config()
                .timeout_global(Some(timeout))
                .timeout_connect(Some(self.req.connect_timeout.min(timeout)))
                .build()
                .call()
        } else {
            request.call()
        }
    }

    /// One GET, retried once when the connection closed before any response:
    /// ureq drops an idle connection whose close has arrived, but not one
    /// the server closes while the request is on its way (an idle timeout
    /// racing the next poll), and never retries. A GET is safe to repeat.
    fn call_retrying_closed(&self, url: &str, timeout: Duration) -> Result<Response, ureq::Error> {
        let started = Instant::now();
        match self.call(url, timeout) {
            Err(e) if closed_before_response(&e) => {
                let left = timeout.saturating_sub(started.elapsed());
                if left.is_zero() {
                    return Err(e);
                }
                self.call(url, left)
            }
            other => other,
        }
    }
}

fn closed_before_response(e: &ureq::Error) -> bool {
    use io::ErrorKind::*;
    matches!(e, ureq::Error::Io(io) if matches!(io.kind(), UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe))
}

impl Transport for UreqTransport<'_> {
    fn get(&self, url: &str, timeout: Duration) -> Result<Exchange, Error> {
        let mut response =
            self.call_retrying_closed(url, timeout).map_err(|e| classify(e, false))?;
        let status = response.status().as_u16();
        let headers = response.headers();
        let location = headers.get("location").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let rate_limit = RateLimit::from_headers(
            headers.iter().filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?))),
        );
        let body = if (200..300).contains(&status) {
            read_body(response.body_mut(), self.req.max_body_bytes)
        } else if status == 403 {
            // It may name the missing scope: read up to a small cap.
            Ok(read_body(response.body_mut(), MAX_FORBIDDEN_BODY).unwrap_or_default())
        } else {
            // Not needed: dropped, closing the connection, not drained.
            Ok(Vec::new())
        };
        Ok(Exchange { status, location, rate_limit, body })
    }
}

fn read_body(body: &mut ureq::Body, limit: u64) -> Result<Vec<u8>, Error> {
    // A declared length over the limit fails before a byte is read.
    if body.content_length().is_some_and(|len| len > limit) {
        return Err(Error::BodyTooLarge(limit));
    }
    body.with_config().limit(limit).read_to_vec().map_err(|e| match classify(e, true) {
        Error::BodyTooLarge(_) => Error::BodyTooLarge(limit),
        other => other,
    })
}

/// Maps ureq's errors onto ours (`in_body`: a drop truncates the document).
/// Where ureq's message could quote the server (echoing the token), the
/// detail is fixed text or ureq's variant name.
pub(crate) fn classify(e: ureq::Error, in_body: bool) -> Error {
    match e {
        ureq::Error::Timeout(_) => Error::Timeout,
        ureq::Error::BodyExceedsLimit(n) => Error::BodyTooLarge(n),
        ureq::Error::Io(io) => classify_io(&io, in_body),
        ureq::Error::Rustls(e) => Error::Tls(e.to_string()),
        ureq::Error::Tls(msg) => Error::Tls(msg.to_string()),
        ureq::Error::Pem(_) => Error::Tls("a PEM certificate could not be read".into()),
        ureq::Error::HostNotFound => Error::Transport("host not found".into()),
        ureq::Error::ConnectionFailed => Error::Transport("connection failed".into()),
        ureq::Error::Protocol(p) if in_body => Error::InvalidJson(format!(
            "malformed or truncated body ({})",
            variant_name(&format!("{p:?}"))
        )),
        ureq::Error::Protocol(p) => Error::Transport(format!(
            "malformed HTTP response ({})",
            variant_name(&format!("{p:?}"))
        )),
        ureq::Error::LargeResponseHeader(_, max) => {
            Error::Transport(format!("response headers over {max} bytes"))
        }
        other => {
            Error::Transport(format!("HTTP client error ({})", variant_name(&format!("{other:?}"))))
        }
    }
}

/// The variant name of a derived `Debug` (`BadHeader("...")`: `BadHeader`).
fn variant_name(debug: &str) -> &str {
    let name = debug.split(|c: char| !c.is_ascii_alphanumeric() && c != '_').next();
    name.filter(|name| !name.is_empty()).unwrap_or("unknown")
}

fn classify_io(e: &io::Error, in_body: bool) -> Error {
    // rustls reports TLS failures as I/O errors carrying a rustls::Error.
    if let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        return Error::Tls(tls.to_string());
    }
    if e.get_ref().is_some_and(|i| i.to_string() == BACKLOG) {
        return Error::Transport(BACKLOG.into());
    }
    use io::ErrorKind::*;
    match e.kind() {
        TimedOut | WouldBlock => Error::Timeout,
        UnexpectedEof if in_body => {
            Error::InvalidJson("body truncated: the connection closed early".into())
        }
        ConnectionReset | ConnectionAborted | BrokenPipe if in_body => {
            Error::InvalidJson("body truncated: the connection was reset".into())
        }
        ConnectionRefused => Error::Transport("connection refused".into()),
        ConnectionReset => Error::Transport("connection reset".into()),
        UnexpectedEof | ConnectionAborted | BrokenPipe => {
            Error::Transport("the server closed the connection".into())
        }
        HostUnreachable | NetworkUnreachable => Error::Transport("host unreachable".into()),
        // An OS error's text is the OS's; of any other, only its kind.
        _ if e.raw_os_error().is_some() => Error::Transport(e.to_string()),
        kind => Error::Transport(kind.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_are_classified() {
        use io::ErrorKind::*;
        let c = |k, in_body| classify(ureq::Error::Io(io::Error::from(k)), in_body);
        assert_eq!(c(TimedOut, false), Error::Timeout);
        assert_eq!(c(ConnectionRefused, false), Error::Transport("connection refused".into()));
        assert!(matches!(c(UnexpectedEof, true), Error::InvalidJson(_)));
        assert!(matches!(c(UnexpectedEof, false), Error::Transport(_)));
        assert!(matches!(c(ConnectionReset, true), Error::InvalidJson(_)));
        let tls = io::Error::new(
            InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert!(matches!(classify(ureq::Error::Io(tls), false), Error::Tls(_)));
        assert_eq!(
            classify(ureq::Error::HostNotFound, false),
            Error::Transport("host not found".into())
        );
        assert_eq!(classify(ureq::Error::BodyExceedsLimit(9), true), Error::BodyTooLarge(9));
        let os = io::Error::from_raw_os_error(97);
        assert!(matches!(
            classify(ureq::Error::Io(os), false),
            Error::Transport(d) if d.contains("os error 97")
        ));
    }

    #[test]
    fn a_dns_backlog_is_a_transport_error_that_says_so() {
        let e = ureq::Error::Io(io::Error::other(BACKLOG));
        assert_eq!(classify(e, false), Error::Transport("more than 64 DNS lookups waiting".into()));
    }

    #[test]
    fn server_text_in_client_errors_is_not_repeated() {
        let echoed = "https://api.example.test/v2?x=ECHOED-SERVER-TEXT";
        for e in [
            ureq::Error::BadUri(echoed.into()),
            ureq::Error::RequireHttpsOnly(echoed.into()),
            ureq::Error::ConnectProxyFailed(echoed.into()),
            ureq::Error::Io(io::Error::other(echoed)),
            ureq::Error::Io(io::Error::new(io::ErrorKind::InvalidData, echoed)),
        ] {
            let classified = classify(e, false);
            let shown = format!("{classified:?}");
            assert!(!shown.contains("ECHOED"), "{shown}");
        }
        assert_eq!(
            classify(ureq::Error::BadUri(echoed.into()), false),
            Error::Transport("HTTP client error (BadUri)".into())
        );
        assert_eq!(
            classify(ureq::Error::LargeResponseHeader(70_000, 65_536), false),
            Error::Transport("response headers over 65536 bytes".into())
        );
    }

    #[test]
    fn variant_names_come_from_debug_output() {
        assert_eq!(variant_name(r#"BadHeader("x: secret")"#), "BadHeader");
        assert_eq!(variant_name("HostNotFound"), "HostNotFound");
        assert_eq!(variant_name("Timeout(Global)"), "Timeout");
        assert_eq!(variant_name("Struct { a: 1 }"), "Struct");
        assert_eq!(variant_name("(\"x\")"), "unknown");
        assert_eq!(variant_name(""), "unknown");
    }

    #[test]
    fn only_a_closed_connection_is_retried() {
        use io::ErrorKind::*;
        for kind in [UnexpectedEof, ConnectionReset, ConnectionAborted, BrokenPipe] {
            assert!(closed_before_response(&ureq::Error::Io(io::Error::from(kind))));
        }
        for e in [
            ureq::Error::Io(io::Error::from(ConnectionRefused)),
            ureq::Error::Io(io::Error::from(TimedOut)),
            ureq::Error::HostNotFound,
            ureq::Error::ConnectionFailed,
        ] {
            assert!(!closed_before_response(&e), "{e:?}");
        }
    }

    #[test]
    fn a_missing_ca_file_is_a_ca_file_error() {
        let key = AgentKey {
            ca_file: Some("/nonexistent/droplet-ca.pem".into()),
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
            keep_alive: Duration::from_secs(1),
        };
        assert!(
            matches!(agent_for(key, None), Err(Error::CaFile(d)) if d.contains("/nonexistent"))
        );
    }

    fn key(ca_file: Option<&str>, connect_ms: u64) -> AgentKey {
        AgentKey {
            ca_file: ca_file.map(str::to_owned),
            connect_timeout: Duration::from_millis(connect_ms),
            request_timeout: Duration::from_secs(1),
            keep_alive: Duration::from_secs(1),
        }
    }

    #[test]
    fn the_agent_cache_holds_at_most_its_bound() {
        // Keys no other test uses: connect timeouts of 7,000,001 ms and up.
        for i in 0..(MAX_AGENTS as u64 + 8) {
            assert!(agent_for(key(None, 7_000_001 + i), None).is_ok());
            let cached = AGENTS.lock().map(|a| a.len()).unwrap_or(usize::MAX);
            assert!(cached <= MAX_AGENTS, "{cached} agents cached");
        }
    }

    #[test]
    fn a_ca_file_rewritten_or_replaced_has_another_identity() {
        use crate::testfs::TempFile;
        let ca = crate::ca::tests::TEST_CA.as_bytes();
        let file = TempFile::new("identity.pem", ca);
        let first = file_id(file.path()).expect("identity");
        assert_eq!(file_id(file.path()), Some(first));
        // The same size, rewritten in place.
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(file.path(), ca).expect("rewrite");
        let rewritten = file_id(file.path()).expect("identity");
        assert_ne!(rewritten, first);
        // Replaced by another file renamed over it.
        let other = TempFile::new("identity_new.pem", ca);
        std::fs::rename(other.path(), file.path()).expect("rename");
        assert_ne!(file_id(file.path()), Some(rewritten));
        assert_eq!(file_id("/nonexistent/droplet-ca.pem"), None);
    }

    #[test]
    fn debug_output_hides_the_token() {
        let req = ListRequest::new("https://api.example.test", "sekret-token-123").expect("valid");
        let t = UreqTransport::new(&req, None).expect("agent");
        for shown in [format!("{t:?}"), format!("{req:?}")] {
            assert!(!shown.contains("sekret"), "{shown}");
            assert!(shown.contains("REDACTED"), "{shown}");
        }
    }
}
