//! Files for tests that remove themselves: a test must not leave litter in
//! the temporary directory, even when it fails (drop runs on unwinding).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

pub struct TempFile {
    path: PathBuf,
    /// `path` as text, for APIs that take `&str`.
    text: String,
}

impl TempFile {
    /// A file holding `content`.
    pub fn new(name: &str, content: &[u8]) -> TempFile {
        let file = TempFile::reserve(name);
        std::fs::write(&file.path, content).expect("write temp file");
        file
    }

    /// A named pipe (made with `mkfifo`, to need no unsafe code).
    pub fn fifo(name: &str) -> TempFile {
        let file = TempFile::reserve(name);
        let status =
            std::process::Command::new("mkfifo").arg(&file.path).status().expect("run mkfifo");
        assert!(status.success(), "mkfifo failed");
        file
    }

    /// A unique path, unique across the parallel tests of this process and
    /// across processes.
    fn reserve(name: &str) -> TempFile {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("droplet_core_{}_{n}_{name}", std::process::id()));
        let text = path.to_string_lossy().into_owned();
        TempFile { path, text }
    }

    pub fn path(&self) -> &str {
        &self.text
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[test]
fn temp_files_are_removed_on_drop() {
    let file = TempFile::new("drop.txt", b"x");
    let path = file.path.clone();
    assert!(path.exists());
    drop(file);
    assert!(!path.exists());

    let fifo = TempFile::fifo("drop.fifo");
    let path = fifo.path.clone();
    assert!(path.exists());
    drop(fifo);
    assert!(!path.exists());
}
