//! The extra CA of `ca_file`: read safely (a regular file, at most
//! [`MAX_CA_FILE_BYTES`], within the listing's deadline) and checked
//! certificate by certificate, then added to Mozilla's roots.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::time::Instant;

use ureq::tls::{Certificate, PemItem};

use crate::error::Error;

/// Mozilla's whole set is about 200 KiB of PEM: more is a wrong path.
pub const MAX_CA_FILE_BYTES: u64 = 1024 * 1024;

/// Mozilla's roots plus every certificate of the PEM file at `path`.
pub(crate) fn roots_with_extra_ca(
    path: &str,
    deadline: Option<Instant>,
) -> Result<Vec<Certificate<'static>>, Error> {
    let pem = read_ca_file(path, deadline)?;
    let extra = parse_ca_pem(&pem).map_err(|d| Error::CaFile(format!("{path}: {d}")))?;
    let mut roots: Vec<Certificate<'static>> = webpki_root_certs::TLS_SERVER_ROOT_CERTS
        .iter()
        .map(|c| Certificate::from_der(c.as_ref()))
        .collect();
    roots.extend(extra);
    Ok(roots)
}

/// The bytes of the CA file, if a regular one (a FIFO or device would block
/// or never end), checked before the open and after it (a swap between).
pub(crate) fn read_ca_file(path: &str, deadline: Option<Instant>) -> Result<Vec<u8>, Error> {
    let fail = |why: String| Error::CaFile(format!("{path}: {why}"));
    check_deadline(deadline)?;
    let meta = std::fs::metadata(path).map_err(|e| fail(e.to_string()))?;
    check_regular_and_small(meta.is_file(), meta.len()).map_err(fail)?;
    let file = open_non_blocking(path).map_err(|e| fail(e.to_string()))?;
    let bytes = read_regular(file).map_err(fail)?;
    check_deadline(deadline)?;
    Ok(bytes)
}

fn read_regular(file: File) -> Result<Vec<u8>, String> {
    let meta = file.metadata().map_err(|e| e.to_string())?;
    check_regular_and_small(meta.is_file(), meta.len())?;
    // The size may change after the check: read one byte past the cap to
    // tell "exactly at the cap" from "over it".
    let mut bytes = Vec::new();
    file.take(MAX_CA_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    check_regular_and_small(true, bytes.len() as u64)?;
    Ok(bytes)
}

fn check_deadline(deadline: Option<Instant>) -> Result<(), Error> {
    match deadline {
        Some(d) if Instant::now() >= d => Err(Error::Timeout),
        _ => Ok(()),
    }
}

fn check_regular_and_small(is_file: bool, len: u64) -> Result<(), String> {
    if !is_file {
        return Err("not a regular file".into());
    }
    if len > MAX_CA_FILE_BYTES {
        return Err(format!("larger than {MAX_CA_FILE_BYTES} bytes"));
    }
    Ok(())
}

#[cfg(unix)]
fn open_non_blocking(path: &str) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)
}

#[cfg(not(unix))]
fn open_non_blocking(path: &str) -> std::io::Result<File> {
    OpenOptions::new().read(true).open(path)
}

/// Every certificate of a PEM bundle, each checked now: rustls would skip a
/// broken one silently, to fail later with a puzzling error.
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::testfs::TempFile;
    use std::time::Duration;

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
    fn a_regular_file_is_read() {
        let file = TempFile::new("ca_ok.pem", TEST_CA.as_bytes());
        assert_eq!(read_ca_file(file.path(), None).map(|b| b.len()), Ok(TEST_CA.len()));
        assert_eq!(roots_with_extra_ca(file.path(), None).map(|r| r.len() > 1), Ok(true));
    }

    #[test]
    fn a_file_at_the_cap_is_read_and_one_byte_more_is_refused() {
        let at_cap = TempFile::new("ca_at_cap.pem", &vec![b'#'; MAX_CA_FILE_BYTES as usize]);
        assert!(read_ca_file(at_cap.path(), None).is_ok());
        let over = TempFile::new("ca_over.pem", &vec![b'#'; MAX_CA_FILE_BYTES as usize + 1]);
        match read_ca_file(over.path(), None) {
            Err(Error::CaFile(d)) => assert!(d.contains("larger than 1048576 bytes"), "{d}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_fifo_is_refused_at_once() {
        let fifo = TempFile::fifo("ca_fifo.pem");
        let path = fifo.path().to_string();
        // On a thread, so that a regression (blocking in open or read until
        // a writer shows up, which none will) fails the test instead of
        // hanging it.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(read_ca_file(&path, None));
        });
        // No writer ever opens the FIFO: a blocking open never returns, so
        // the generous wait only turns that hang into a failure.
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Err(Error::CaFile(d))) => assert!(d.ends_with("not a regular file"), "{d}"),
            Ok(other) => panic!("{other:?}"),
            Err(_) => panic!("reading a FIFO as the CA file blocked"),
        }
    }

    #[test]
    fn an_opened_file_is_checked_again() {
        // What a FIFO swapped in between the path's check and the open
        // would look like: opened without blocking, refused before reading.
        let fifo = TempFile::fifo("ca_swapped.fifo");
        let opened = open_non_blocking(fifo.path()).expect("non-blocking open");
        assert_eq!(read_regular(opened), Err("not a regular file".into()));
        let file = TempFile::new("ca_opened.pem", b"pem");
        let opened = open_non_blocking(file.path()).expect("open");
        assert_eq!(read_regular(opened), Ok(b"pem".to_vec()));
    }

    #[test]
    fn a_directory_and_a_missing_file_are_refused() {
        let dir = std::env::temp_dir();
        let dir = dir.to_str().unwrap_or("/tmp");
        assert!(
            matches!(read_ca_file(dir, None), Err(Error::CaFile(d)) if d.ends_with("not a regular file"))
        );
        assert!(matches!(
            read_ca_file("/nonexistent/droplet-ca.pem", None),
            Err(Error::CaFile(d)) if d.starts_with("/nonexistent/droplet-ca.pem: ")
        ));
    }

    #[test]
    fn a_passed_deadline_is_a_timeout_before_any_read() {
        let past = Instant::now();
        // A missing file would be a CaFile error: Timeout shows the
        // deadline was checked first.
        assert_eq!(read_ca_file("/nonexistent/droplet-ca.pem", Some(past)), Err(Error::Timeout));
        let file = TempFile::new("ca_deadline.pem", TEST_CA.as_bytes());
        let later = Instant::now() + Duration::from_secs(60);
        assert!(read_ca_file(file.path(), Some(later)).is_ok());
    }

    #[test]
    fn the_checks_are_pure() {
        assert_eq!(check_regular_and_small(true, 0), Ok(()));
        assert_eq!(check_regular_and_small(true, MAX_CA_FILE_BYTES), Ok(()));
        assert!(check_regular_and_small(true, MAX_CA_FILE_BYTES + 1).is_err());
        assert!(check_regular_and_small(false, 0).is_err());
        assert_eq!(check_deadline(None), Ok(()));
    }
}
