# Peer nodes and the fake API log through this VM; keep test output readable.
ExUnit.start(capture_log: true)
# An optional dependency, so Mix does not start it (Elixir 1.14); a host
# application with libcluster runs it.
{:ok, _} = Application.ensure_all_started(:telemetry)
