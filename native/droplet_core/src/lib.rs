//! libcluster_droplet core, free of any Erlang dependency so it can be unit
//! tested with plain `cargo test` (`native/README.md` lists its modules).

pub mod api;
pub mod autoscale;
pub mod bounds;
pub mod budget;
mod ca;
pub mod cancel;
pub mod error;
pub mod fields;
pub mod filters;
mod http;
pub mod links;
pub mod model;
mod pool;
pub mod probe;
pub mod ratelimit;
pub mod redact;
pub mod resolve;
pub mod scope;
pub mod select;
pub mod transport;

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod testfs;
#[cfg(test)]
mod testserver;

pub use error::Error;

/// The library version, sent in the `User-Agent`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[cfg(test)]
mod tests {
    #[test]
    fn version_is_set() {
        assert!(!super::VERSION.is_empty());
    }
}
