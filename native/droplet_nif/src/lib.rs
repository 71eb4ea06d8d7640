//! Erlang NIF glue of libcluster_droplet.

#[rustler::nif]
fn nif_version() -> &'static str {
    droplet_core::VERSION
}

rustler::init!("Elixir.LibclusterDroplet.Native");
