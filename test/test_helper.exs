# Peer nodes and the fake API log through this VM; keep test output readable.
# :pending_rust_redaction: API values redacted by pieces in the NIF (the
# Rust branch); the tag goes once it has landed.
ExUnit.start(capture_log: true, exclude: [:pending_rust_redaction])
# An optional dependency, so Mix does not start it (Elixir 1.14); a host
# application with libcluster runs it.
{:ok, _} = Application.ensure_all_started(:telemetry)
