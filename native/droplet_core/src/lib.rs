//! libcluster_droplet core, free of any Erlang dependency so it can be unit
//! tested with plain `cargo test`.
//!
//! - [`model`]: the droplet listing as DigitalOcean sends it, parsed within
//!   [`bounds`].
//! - [`select`]: which address of a droplet to connect to.
//! - [`api`]: listing all droplets (pagination, redirects, limits), over a
//!   [`transport::Transport`]; the real one is ureq's, in `http`, which
//!   reads the extra CA with `ca` and resolves host names with [`resolve`].
//! - [`filters`]: the caller's filters as the listings the API accepts.
//! - [`links`]: origins, query parameters and redirect targets.
//! - [`scope`]: the token scope a 403 names, and [`redact`]: keeping every
//!   piece of the token out of errors and listed values.
//! - [`probe`]: parallel TCP connect probes.
//! - [`budget`]: the process-wide bound on the NIF's threads, and
//!   [`cancel`]: stopping a call whose caller is gone.

pub mod api;
pub mod bounds;
pub mod budget;
mod ca;
pub mod cancel;
pub mod error;
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
