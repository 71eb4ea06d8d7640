//! A tiny HTTP/1.1 responder on 127.0.0.1 for the client's tests: enough to
//! answer GETs with keep-alive, record what was asked (and on which
//! connection), and misbehave on purpose (truncate, stall, oversize, hang
//! up). Optionally speaks TLS.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Recorded {
    pub target: String,
    pub headers: Vec<(String, String)>,
    /// Which accepted connection it came on, from 1.
    pub connection: usize,
    /// Requests served on that connection before this one.
    pub earlier_on_connection: usize,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone)]
pub enum Body {
    Full(Vec<u8>),
    /// Declares the full length but sends only `sent` bytes, then closes.
    Truncated {
        full: Vec<u8>,
        sent: usize,
    },
    /// No Content-Length: the body ends when the connection closes.
    UntilClose(Vec<u8>),
    /// No response at all: the connection is closed once the request is read.
    Hangup,
    /// Like `Full`, keep-alive and all, but the connection is then closed,
    /// as a server's idle timeout would.
    FullThenClose(Vec<u8>),
}

#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Body,
    /// Wait this long before answering at all.
    pub delay: Duration,
}

impl Reply {
    pub fn json(body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status: 200,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: Body::Full(body.into()),
            delay: Duration::ZERO,
        }
    }

    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: vec![],
            body: Body::Full(br#"{"id":"x","message":"y"}"#.to_vec()),
            delay: Duration::ZERO,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }
}

type Handler = dyn Fn(&Recorded) -> Reply + Send + Sync;

pub struct Server {
    pub port: u16,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    pub connections: Arc<Mutex<usize>>,
}

impl Server {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn https_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn recorded(&self) -> Vec<Recorded> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }

    pub fn connection_count(&self) -> usize {
        self.connections.lock().map(|c| *c).unwrap_or(0)
    }

    pub fn start(handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> Server {
        Self::start_inner(Arc::new(handler), None)
    }

    pub fn start_tls(handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> Server {
        Self::start_inner(Arc::new(handler), Some(tls_config()))
    }

    fn start_inner(handler: Arc<Handler>, tls: Option<Arc<rustls::ServerConfig>>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind test server");
        let port = listener.local_addr().expect("local addr").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(Mutex::new(0));
        let (reqs, conns) = (requests.clone(), connections.clone());
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let connection = match conns.lock() {
                    Ok(mut c) => {
                        *c += 1;
                        *c
                    }
                    Err(_) => 0,
                };
                let (handler, reqs, tls) = (handler.clone(), reqs.clone(), tls.clone());
                thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                    match tls {
                        None => serve(stream, connection, &*handler, &reqs),
                        Some(cfg) => {
                            let Ok(conn) = rustls::ServerConnection::new(cfg) else {
                                return;
                            };
                            let stream = rustls::StreamOwned::new(conn, stream);
                            serve(stream, connection, &*handler, &reqs);
                        }
                    }
                });
            }
        });
        Server { port, requests, connections }
    }
}

fn serve<S: Read + Write>(
    stream: S,
    connection: usize,
    handler: &Handler,
    reqs: &Mutex<Vec<Recorded>>,
) {
    let mut reader = BufReader::new(stream);
    for earlier_on_connection in 0.. {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let target = line.split(' ').nth(1).unwrap_or("").to_string();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        let recorded = Recorded { target, headers, connection, earlier_on_connection };
        if let Ok(mut r) = reqs.lock() {
            r.push(recorded.clone());
        }
        let reply = handler(&recorded);
        thread::sleep(reply.delay);
        let stream = reader.get_mut();
        let mut head = format!("HTTP/1.1 {} X\r\n", reply.status);
        for (k, v) in &reply.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        let keep_going = match &reply.body {
            Body::Full(b) | Body::FullThenClose(b) => {
                head.push_str(&format!("Content-Length: {}\r\n\r\n", b.len()));
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(b);
                matches!(reply.body, Body::Full(_))
            }
            Body::Truncated { full, sent } => {
                head.push_str(&format!("Content-Length: {}\r\n\r\n", full.len()));
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&full[..(*sent).min(full.len())]);
                false
            }
            Body::UntilClose(b) => {
                head.push_str("Connection: close\r\n\r\n");
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(b);
                false
            }
            Body::Hangup => false,
        };
        let _ = stream.flush();
        if !keep_going {
            return;
        }
    }
}

fn tls_config() -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(include_bytes!("../testdata/server.pem"))
            .collect::<Result<_, _>>()
            .expect("test cert");
    let key =
        PrivateKeyDer::from_pem_slice(include_bytes!("../testdata/server.key")).expect("test key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
    Arc::new(config)
}

/// A server that accepts connections and never answers.
pub fn silent() -> (TcpListener, u16, Arc<Mutex<Vec<TcpStream>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    let l = listener.try_clone().expect("clone listener");
    thread::spawn(move || {
        for s in l.incoming().flatten() {
            if let Ok(mut k) = keep.lock() {
                k.push(s);
            }
        }
    });
    (listener, port, held)
}
