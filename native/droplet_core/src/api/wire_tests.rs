//! Faults below HTTP, against real sockets: what the fake DigitalOcean API of
//! the Elixir tests no longer fakes (a reset, a TLS stream cut without
//! `close_notify`) and answers no JSON parser should meet whole (HTML, raw
//! bytes). Each must fail the listing with a clear error, never a panic, and
//! never carry a piece of the token back.

use super::*;
use crate::model::tests::ALL;
use crate::testfs::TempFile;
use crate::testserver::{Body, Reply, Server};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

const TOKEN: &str = "dop_v1_wire0123456789abcdef0123456789abcdef";

fn request_to(url: &str) -> ListRequest {
    let mut req = ListRequest::new(url, TOKEN).expect("valid request");
    req.connect_timeout = Duration::from_secs(2);
    req.request_timeout = Duration::from_secs(5);
    req.deadline = Duration::from_secs(10);
    req
}

/// No 8-character piece of the token in what the error shows.
fn assert_token_absent(error: &Error) {
    let shown = format!("{error:?}");
    for start in 0..=TOKEN.len() - 8 {
        let piece = &TOKEN[start..start + 8];
        assert!(!shown.contains(piece), "{piece:?} of the token in {shown}");
    }
}

/// A server that answers every connection with a response head declaring
/// all of `body`, then half of it, then a TCP reset (SO_LINGER 0: an RST,
/// not a FIN). Sends the number of resets it made.
fn resetting_server(body: &'static [u8]) -> (String, std::sync::mpsc::Receiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (reset, resets) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut request_started = [0u8; 1];
            if stream.read_exact(&mut request_started).is_err() {
                continue;
            }
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body[..body.len() / 2]);
            let _ = stream.flush();
            // Long enough for the client to read what was sent: Linux drops
            // unread received data when the RST arrives.
            std::thread::sleep(Duration::from_millis(50));
            if socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO)).is_ok() {
                let _ = reset.send(());
            }
        }
    });
    (url, resets)
}

#[test]
fn a_reset_in_the_middle_of_the_body_fails_the_listing() {
    let (url, resets) = resetting_server(ALL.as_bytes());
    let stats = Stats::default();
    let error = list_droplets(&request_to(&url), &stats, &0).expect_err("a reset fails");
    assert!(matches!(error, Error::Transport(_) | Error::InvalidJson(_)), "{error:?}");
    assert!(stats.requests() >= 1);
    assert!(resets.try_iter().count() >= 1, "the server reset a connection");
    assert_token_absent(&error);
}

#[test]
fn a_tls_stream_cut_without_close_notify_fails_the_listing() {
    let server = Server::start_tls(|_| {
        let mut r = Reply::json(Vec::new());
        r.body = Body::Truncated { full: ALL.as_bytes().to_vec(), sent: ALL.len() / 2 };
        r
    });
    let ca = TempFile::new("wire_ca.pem", crate::ca::tests::TEST_CA.as_bytes());
    let mut req = request_to(&server.https_url());
    req.ca_file = Some(ca.path().into());
    let error = list_droplets(&req, &Stats::default(), &0).expect_err("a cut stream fails");
    assert!(
        matches!(error, Error::Transport(_) | Error::InvalidJson(_) | Error::Tls(_)),
        "{error:?}"
    );
    assert!(!server.recorded().is_empty(), "the request got through");
    assert_token_absent(&error);
}

#[test]
fn html_and_raw_bytes_are_invalid_json_and_an_html_error_keeps_its_status() {
    const HTML: &str = "<!DOCTYPE html><html><body><h1>502 Bad Gateway</h1></body></html>";
    let html = |status: u16| {
        move |_: &crate::testserver::Recorded| Reply {
            status,
            headers: vec![("Content-Type".into(), "text/html".into())],
            body: Body::Full(HTML.as_bytes().to_vec()),
            delay: Duration::ZERO,
        }
    };
    let ok_page = Server::start(html(200));
    let error = list_droplets(&request_to(&ok_page.url()), &Stats::default(), &0)
        .expect_err("HTML is not JSON");
    assert!(matches!(error, Error::InvalidJson(_)), "{error:?}");

    let proxy_error = Server::start(html(502));
    assert_eq!(
        list_droplets(&request_to(&proxy_error.url()), &Stats::default(), &0),
        Err(Error::HttpStatus(502))
    );

    let bytes: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    let raw = Server::start(move |_| Reply::json(bytes.clone()));
    let error = list_droplets(&request_to(&raw.url()), &Stats::default(), &0)
        .expect_err("raw bytes are not JSON");
    assert!(matches!(error, Error::InvalidJson(_)), "{error:?}");
    assert_token_absent(&error);
}
