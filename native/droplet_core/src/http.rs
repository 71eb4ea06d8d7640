//! The real transport: one GET with ureq, no redirects followed (the caller
//! decides where the token may go), TLS always verified.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::sync::Mutex;
use std::time::Duration;

use once_cell::sync::Lazy;
use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig};
use ureq::Agent;

use crate::api::{Exchange, ListRequest, Transport};
use crate::error::{short, Error};
use crate::ratelimit::RateLimit;

/// Agents are reused across listings so polls ride on kept-alive connections
/// and resumed TLS sessions. The timeouts are part of the key because ureq
/// only caches its TLS configuration (and with it the session store) for
/// agent-level settings: per-request overrides would rebuild it every time.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct AgentKey {
    ca_file: Option<String>,
    connect_timeout: Duration,
    request_timeout: Duration,
}

static AGENTS: Lazy<Mutex<HashMap<AgentKey, Agent>>> = Lazy::new(|| Mutex::new(HashMap::new()));

/// Distinct settings are few (one per strategy config); this only guards
/// against a caller cycling through CA files forever.
const MAX_AGENTS: usize = 32;

fn agent_for(key: AgentKey) -> Result<Agent, Error> {
    // A poisoned lock only means another listing panicked mid-insert; the map
    // itself is still a valid cache.
    if let Some(agent) = AGENTS.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Ok(agent.clone());
    }
    // Built outside the lock: reading a CA file must not stall other callers.
    let agent = build_agent(&key)?;
    let mut agents = AGENTS.lock().unwrap_or_else(|e| e.into_inner());
    if agents.len() >= MAX_AGENTS && !agents.contains_key(&key) {
        agents.clear();
    }
    Ok(agents.entry(key).or_insert(agent).clone())
}

fn build_agent(key: &AgentKey) -> Result<Agent, Error> {
    let roots = match &key.ca_file {
        None => RootCerts::WebPki,
        Some(path) => RootCerts::new_with_certs(&roots_with_extra_ca(path)?),
    };
    let config = Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_connect(Some(key.connect_timeout))
        .timeout_global(Some(key.request_timeout))
        .max_idle_connections_per_host(8)
        .user_agent(format!("libcluster_droplet/{}", crate::VERSION))
        .accept("application/json")
        .tls_config(TlsConfig::builder().root_certs(roots).build())
        .build();
    Ok(config.new_agent())
}

/// Mozilla's roots plus every certificate of the PEM file at `path`.
fn roots_with_extra_ca(path: &str) -> Result<Vec<Certificate<'static>>, Error> {
    let pem = std::fs::read(path).map_err(|e| Error::CaFile(short(format!("{path}: {e}"))))?;
    let extra = parse_ca_pem(&pem).map_err(|d| Error::CaFile(short(format!("{path}: {d}"))))?;
    let mut roots: Vec<Certificate<'static>> = webpki_root_certs::TLS_SERVER_ROOT_CERTS
        .iter()
        .map(|c| Certificate::from_der(c.as_ref()))
        .collect();
    roots.extend(extra);
    Ok(roots)
}

/// Every certificate in a PEM bundle, each checked to be a usable trust
/// anchor now: rustls would otherwise skip a broken one silently and the
/// failure would surface later as a puzzling certificate error.
pub(crate) fn parse_ca_pem(pem: &[u8]) -> Result<Vec<Certificate<'static>>, String> {
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(pem) {
        match item {
            Ok(PemItem::Certificate(cert)) => {
                let mut probe = rustls::RootCertStore::empty();
                probe
                    .add(rustls::pki_types::CertificateDer::from(cert.der()))
                    .map_err(|e| format!("certificate {} is unusable: {e}", certs.len() + 1))?;
                certs.push(cert);
            }
            Ok(_) => {}
            Err(e) => return Err(format!("not valid PEM: {e}")),
        }
    }
    if certs.is_empty() {
        return Err("no PEM certificate found".into());
    }
    Ok(certs)
}

pub struct UreqTransport {
    agent: Agent,
    authorization: String,
    connect_timeout: Duration,
    request_timeout: Duration,
    max_body: u64,
}

impl fmt::Debug for UreqTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UreqTransport")
            .field("authorization", &"[REDACTED]")
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("max_body", &self.max_body)
            .finish_non_exhaustive()
    }
}

impl UreqTransport {
    pub fn new(req: &ListRequest) -> Result<UreqTransport, Error> {
        let agent = agent_for(AgentKey {
            ca_file: req.ca_file.clone(),
            connect_timeout: req.connect_timeout,
            request_timeout: req.request_timeout,
        })?;
        Ok(UreqTransport {
            agent,
            authorization: format!("Bearer {}", req.token),
            connect_timeout: req.connect_timeout,
            request_timeout: req.request_timeout,
            max_body: req.max_body_bytes,
        })
    }
}

impl Transport for UreqTransport {
    fn get(&self, url: &str, timeout: Duration) -> Result<Exchange, Error> {
        let request = self
            .agent
            .get(url)
            .header("Authorization", self.authorization.as_str());
        // Only near the listing's deadline does a request get a shorter
        // budget than the agent's; see `AgentKey` for why that is rare.
        let result = if timeout < self.request_timeout {
            request
                .config()
                .timeout_global(Some(timeout))
                .timeout_connect(Some(self.connect_timeout.min(timeout)))
                .build()
                .call()
        } else {
            request.call()
        };
        let mut response = result.map_err(|e| classify(e, false))?;
        let status = response.status().as_u16();
        let headers = response.headers();
        let location = headers
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let rate_limit = RateLimit::from_headers(
            headers
                .iter()
                .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?))),
        );
        let body = if (200..300).contains(&status) {
            read_body(response.body_mut(), self.max_body)
        } else {
            // Error and redirect bodies are not needed; dropping the response
            // closes the connection rather than draining an unknown amount.
            Ok(Vec::new())
        };
        Ok(Exchange {
            status,
            location,
            rate_limit,
            body,
        })
    }
}

fn read_body(body: &mut ureq::Body, limit: u64) -> Result<Vec<u8>, Error> {
    // A declared length over the limit fails before a byte is read.
    if body.content_length().is_some_and(|len| len > limit) {
        return Err(Error::BodyTooLarge(limit));
    }
    body.with_config()
        .limit(limit)
        .read_to_vec()
        .map_err(|e| match classify(e, true) {
            Error::BodyTooLarge(_) => Error::BodyTooLarge(limit),
            other => other,
        })
}

/// Maps ureq's errors onto ours. `in_body`: the status line and headers had
/// arrived, so a connection dropping now means a truncated document.
pub(crate) fn classify(e: ureq::Error, in_body: bool) -> Error {
    match e {
        ureq::Error::Timeout(_) => Error::Timeout,
        ureq::Error::BodyExceedsLimit(n) => Error::BodyTooLarge(n),
        ureq::Error::Io(io) => classify_io(&io, in_body),
        ureq::Error::Rustls(e) => Error::Tls(short(e.to_string())),
        ureq::Error::Tls(msg) => Error::Tls(short(msg)),
        ureq::Error::Pem(e) => Error::Tls(short(format!("PEM: {e:?}"))),
        ureq::Error::HostNotFound => Error::Transport("host not found".into()),
        ureq::Error::ConnectionFailed => Error::Transport("connection failed".into()),
        ureq::Error::Protocol(p) if in_body => {
            Error::InvalidJson(short(format!("malformed or truncated body: {p}")))
        }
        ureq::Error::Protocol(p) => Error::Transport(short(format!("HTTP protocol error: {p}"))),
        other => Error::Transport(short(other.to_string())),
    }
}

fn classify_io(e: &io::Error, in_body: bool) -> Error {
    // rustls reports handshake and certificate failures as I/O errors
    // carrying a rustls::Error; that inner error is what tells TLS apart.
    if let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        return Error::Tls(short(tls.to_string()));
    }
    use io::ErrorKind::*;
    match e.kind() {
        TimedOut | WouldBlock => Error::Timeout,
        UnexpectedEof if in_body => {
            Error::InvalidJson("body truncated: the connection closed early".into())
        }
        ConnectionReset | ConnectionAborted | BrokenPipe if in_body => {
            Error::InvalidJson(short(format!("body truncated: {e}")))
        }
        ConnectionRefused => Error::Transport("connection refused".into()),
        ConnectionReset => Error::Transport("connection reset".into()),
        UnexpectedEof | ConnectionAborted | BrokenPipe => {
            Error::Transport("the server closed the connection".into())
        }
        HostUnreachable | NetworkUnreachable => Error::Transport("host unreachable".into()),
        _ => Error::Transport(short(e.to_string())),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const TEST_CA: &str = include_str!("../testdata/ca.pem");
    const TEST_LEAF: &str = include_str!("../testdata/server.pem");

    #[test]
    fn pem_bundles_parse_all_certificates() {
        let bundle = format!("{TEST_CA}\n{TEST_LEAF}");
        assert_eq!(parse_ca_pem(bundle.as_bytes()).map(|c| c.len()), Ok(2));
        assert_eq!(parse_ca_pem(TEST_CA.as_bytes()).map(|c| c.len()), Ok(1));
    }

    #[test]
    fn bad_pem_is_refused() {
        assert!(parse_ca_pem(b"").is_err());
        assert!(parse_ca_pem(b"just text").is_err());
        assert!(parse_ca_pem(include_bytes!("../testdata/server.key")).is_err());
        let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(parse_ca_pem(garbage.as_bytes()).is_err());
        let bad_base64 = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        assert!(parse_ca_pem(bad_base64.as_bytes()).is_err());
    }

    #[test]
    fn io_errors_are_classified() {
        use io::ErrorKind::*;
        let c = |k, in_body| classify(ureq::Error::Io(io::Error::from(k)), in_body);
        assert_eq!(c(TimedOut, false), Error::Timeout);
        assert_eq!(
            c(ConnectionRefused, false),
            Error::Transport("connection refused".into())
        );
        assert!(matches!(c(UnexpectedEof, true), Error::InvalidJson(_)));
        assert!(matches!(c(UnexpectedEof, false), Error::Transport(_)));
        assert!(matches!(c(ConnectionReset, true), Error::InvalidJson(_)));
        let tls = io::Error::new(
            InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert!(matches!(
            classify(ureq::Error::Io(tls), false),
            Error::Tls(_)
        ));
        assert_eq!(
            classify(ureq::Error::HostNotFound, false),
            Error::Transport("host not found".into())
        );
        assert_eq!(
            classify(ureq::Error::BodyExceedsLimit(9), true),
            Error::BodyTooLarge(9)
        );
    }

    #[test]
    fn a_missing_ca_file_is_a_ca_file_error() {
        let key = AgentKey {
            ca_file: Some("/nonexistent/droplet-ca.pem".into()),
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
        };
        assert!(matches!(agent_for(key), Err(Error::CaFile(d)) if d.contains("/nonexistent")));
    }

    #[test]
    fn the_transport_debug_hides_the_token() {
        let mut req = ListRequest::new("http://127.0.0.1:9", "sekret-token-123").expect("valid");
        req.ca_file = None;
        let t = UreqTransport::new(&req).expect("agent");
        let shown = format!("{t:?}");
        assert!(!shown.contains("sekret"), "{shown}");
    }
}
