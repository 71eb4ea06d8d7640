//! libcluster_droplet core, free of any Erlang dependency so it can be unit
//! tested with plain `cargo test`.

/// The library version, sent in the `User-Agent`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[cfg(test)]
mod tests {
    #[test]
    fn version_is_set() {
        assert!(!super::VERSION.is_empty());
    }
}
