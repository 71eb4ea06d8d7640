defmodule LibclusterDroplet.Native do
  @moduledoc false
  # The Rust NIF `droplet_nif`. RustlerPrecompiled installs it when this
  # module compiles: the precompiled artifact of this version and target,
  # checked against checksum-Elixir.LibclusterDroplet.Native.exs, or a cargo
  # build through Rustler when asked to (LibclusterDroplet.Native.Build has
  # the knobs and the error messages).
  #
  # Calls that do network I/O return at once and answer with a message from a
  # thread of the NIF's own, so no Erlang scheduler ever waits on the network.
  #
  # Those calls return {:ok, handle, concurrency} or {:error, reason}: reason
  # :busy when 64 calls are in flight already. `handle` is a resource; once
  # it is garbage collected, or given to cancel/1, the call starts no new
  # probe or page and answers {:error, :cancelled} (unless every item had
  # already run). `concurrency` is the number of items the call runs at once
  # at least: at most the one asked for (probes: capped at 512), its
  # coordinator thread plus the helper threads it started with from a VM-wide
  # pool of 1,024 (at most 128, an eighth, so that calls arriving together
  # share it), which it keeps; at least 1. Between items a call grows towards
  # its fair share of the pool as helpers free up, and helpers it grew beyond
  # that share end, so one slow call cannot starve the others.
  #
  # Host names are resolved on a VM-wide pool of 4 threads (named
  # libcluster_dns, started at the first lookup), at most 64 lookups
  # waiting, each within its request's timeout: slow DNS adds no thread per
  # call.
  #
  # list_droplets(request, ref) :: {:ok, handle, page_concurrency} | {:error, reason}
  #   request: %{api_url: binary, token: binary} plus optional tag_name, name,
  #   per_page, ca_file, connect_timeout_ms, request_timeout_ms, deadline_ms,
  #   max_body_bytes, max_pages, max_droplets, page_concurrency (1..64),
  #   keep_alive_ms (the idle age of kept-alive connections, 0..86_400_000),
  #   max_listing_bytes, max_string_bytes, max_tags_per_droplet,
  #   max_addresses_per_droplet (1..2^40; past one the listing answers
  #   {:listing_too_large, {bound, limit}}). tag_name: a binary or a list of
  #   1 to 64 binaries; every binary at most 4,096 bytes. Lists are walked on
  #   the scheduler only up to their cap plus one.
  #   select (nil | %{network: :private | :public, ipv6: boolean}).
  #   fields: at most 16 paths, each a list of 1 to 4 binaries (JSON keys);
  #   each droplet then has fields: %{"a.b" => value} (a path named twice,
  #   once): the string, number, boolean or list of at most 256 strings at
  #   that path, else nil; strings redacted and held to the listing's bounds.
  #   Without fields, fields: %{}.
  #   autoscale_pool: nil | %{id: binary | nil, name: binary | nil, tags:
  #   [binary] | nil} (not with tag_name or name): by name (id nil, tags nil)
  #   it is found with GET /v2/droplets/autoscale?name= (exact name); by id
  #   (tags nil) with GET /v2/droplets/autoscale/{id}; with id, name and tags
  #   (at most 64) it is known and not looked up. Then every page of
  #   .../{id}/members (held to max_droplets), then the droplet listing of
  #   the template's first tag, or of every droplet without one. No such
  #   pool (a 404 for its id): :pool_not_found.
  #   Sends {:droplet_nif_list, ref, {:ok, %{droplets: [droplet], total: n,
  #   pool: nil | %{id, name, tags, members: [%{droplet_id, status,
  #   health_status}]}}} | {:error, reason}, %{requests: n, pool_requests: n,
  #   elapsed_us: n, rate_limit: nil | map}}: requests counts every request,
  #   pool_requests those that looked the pool up or paged its members.
  #
  # probe(addresses, check, concurrency, ref) :: {:ok, handle, concurrency} | {:error, reason}
  #   addresses: a proper list of at most 10,000 binaries, else
  #   {:error, {:invalid_request, _}}; one over 64 bytes is that target's
  #   :invalid_address. check: a health check's map (HealthCheck's
  #   native/1), read generically: at most 16 entries, atom keys, each value
  #   an atom, an integer, a binary of at most 1,024 bytes, or one list of at
  #   most 16 of those; its :kind picks the Rust check (probe::Check), e.g.
  #   %{kind: :tcp, port: 1..65_535, timeout_ms: 1..3_600_000}. A bad one is
  #   {:error, {:invalid_request, "check: ..."}}, naming the field, never a
  #   value. Sends {:droplet_nif_probe, ref, [{address,
  #   {:ok, connect_us} | {:error, :timeout | :refused | :unreachable |
  #   :invalid_address | {:io, binary}}}] | {:error, reason}}, in input order,
  #   each address the very binary passed in.
  #
  # cancel(handle) :: :ok | {:error, {:invalid_request, _}}
  #
  # Only in this repository's own builds of the NIF, for its tests (cargo
  # feature test-panic: native/droplet_nif/src/debug.rs and debug_panic in
  # lib.rs); never in a dependency's build or a precompiled artifact:
  #   debug_panic(:nif | :list, ref): panics on purpose.
  #   debug_thread_times() :: {tid, now_ns, wait_ns}: the calling scheduler
  #   thread's id, the monotonic clock, and the thread's run-queue wait so far.
  #   debug_hold(:spin | :sleep, ms): holds the calling scheduler on purpose.
  #   debug_budget() :: {calls_in_flight, helpers_in_use}: the thread budget.
  #   debug_admit(helpers) :: {:ok, held, granted} | {:error, :busy}: takes a
  #   call slot and up to `helpers` helper permits, as a call would, without
  #   running anything; debug_release(held) :: :ok gives them back (so does
  #   garbage collecting `held`).
  #   debug_dns_delay(ms) :: :ok: every DNS lookup takes `ms` first, as under
  #   slow DNS.

  alias LibclusterDroplet.Native.Build

  @options Build.options(
             Mix.Project.config(),
             Application.compile_env(:libcluster_droplet, :precompiled_base_url)
           )

  Build.check_source_build!(@options)

  try do
    use RustlerPrecompiled, @options
  rescue
    error in RuntimeError -> Build.explain!(error, @options)
  end

  def nif_version, do: :erlang.nif_error(:nif_not_loaded)

  def list_droplets(_request, _ref), do: :erlang.nif_error(:nif_not_loaded)

  def probe(_addresses, _check, _concurrency, _ref), do: :erlang.nif_error(:nif_not_loaded)

  def cancel(_handle), do: :erlang.nif_error(:nif_not_loaded)

  def debug_panic(_where, _ref), do: :erlang.nif_error(:nif_not_loaded)

  def debug_thread_times, do: :erlang.nif_error(:nif_not_loaded)

  def debug_hold(_kind, _ms), do: :erlang.nif_error(:nif_not_loaded)

  def debug_budget, do: :erlang.nif_error(:nif_not_loaded)

  def debug_admit(_helpers), do: :erlang.nif_error(:nif_not_loaded)

  def debug_release(_held), do: :erlang.nif_error(:nif_not_loaded)

  def debug_dns_delay(_ms), do: :erlang.nif_error(:nif_not_loaded)
end
