defmodule LibclusterDroplet.FakeAPI do
  @moduledoc """
  A fake of DigitalOcean's `GET /v2/droplets`, served over real HTTP/1.1 (or
  HTTPS) on a loopback address, for the tests, the demo and the benchmarks.

      {:ok, api} = FakeAPI.start_link(token: "test-token", droplets: [
        FakeAPI.droplet(id: 1, name: "node-1", private_ip: "127.0.0.2", tags: ["app"])
      ])
      FakeAPI.url(api)
      #=> "http://127.0.0.1:40123"

  ## What it serves

    * Only `GET /v2/droplets`; every other method or path gets a 404 JSON
      error (after authentication and rate limiting, as the real API).
    * `Authorization: Bearer <token>` with the `:token` given at start (the
      scheme is case-insensitive); otherwise 401 `unauthorized`.
    * Query parameters: `per_page` (default 20, values above 200 are clamped
      to 200; a non-integer or a value below 1 is a 400 `bad_request`),
      `page` (1-based, default 1, same validation), `tag_name` (droplets
      whose `tags` contain it), `name` (exact, case-insensitive), `type`
      (`droplets`, the default, lists the droplets without a `gpu_info`
      object; `gpus` lists only GPU droplets, those with one; anything else
      is a 400). `tag_name` with `name` or `type` is a 422 with the body
      `{"id": "unprocessable_entity", "message": ..., "request_id": ...}`;
      `name` with `type` is accepted.
    * The body is `{"droplets": [...], "links": {"pages": {...}},
      "meta": {"total": N}}`. `links.pages` holds absolute URLs built from
      `url/1` that keep `per_page` and the filters: `first` and `prev` when
      not on page 1, `next` and `last` before the last page, `{}` for a
      single page. A page past the end is empty, with `first` and `prev`.
    * Droplets are listed in the order they were given. Each one's JSON is
      encoded once, when it is set, so a page is assembled from cached
      binaries; filtered listings are cached until the droplets change.
    * Every response has `content-length`, `content-type:
      application/json; charset=utf-8` (`text/html` for the `:html` fault)
      and the `ratelimit-limit`, `ratelimit-remaining` and `ratelimit-reset`
      headers. Connections are kept alive (HTTP/1.1 rules, `Connection:
      close` honoured, idle ones closed after `:keep_alive_timeout`) and each
      is served by its own process.

  ## Rate limits

  DigitalOcean's two limits for the one token: `per_hour` requests in a
  sliding window of `hour_ms`, and `per_minute` requests in a sliding window
  of `minute_ms`. A request over the hourly budget gets a 429 with
  `ratelimit-remaining: 0`; one over the burst limit gets a 429 with a
  `retry-after` (whole seconds, rounded up, at least 1) saying when the
  burst window frees a slot. `ratelimit-reset` is the Unix time (seconds,
  rounded up) when the oldest counted request leaves the hour window, or now
  when none is counted. Responses with status 401 or 429 are not counted.
  Shrink the windows to hit the limits within seconds, e.g.
  `rate_limit: [per_minute: 5, minute_ms: 2000]`.

  ## Faults

  `inject/3` queues a fault for the next matching `GET /v2/droplets`
  requests that pass authentication and the rate limit (faults are matched
  in the order they were injected). See `t:fault/0`.

  ## Request log

  Each request the server decided on is logged (see `t:request/0`), with
  `at_ms` the time of the decision. A request too malformed to parse is
  answered 400 by the connection without reaching the log.

  ## Loopback only

  The server listens on a loopback address only, and every droplet it is
  given must have only loopback addresses (`127.0.0.0/8` or `::1`) in
  `networks.v4[].ip_address` and `networks.v6[].ip_address`, so a client of
  the fake never contacts another host. (The URLs of the `:foreign_next` and
  `:redirect` faults are the test's own choice and are only handed out, never
  contacted.)
  """

  use GenServer

  alias LibclusterDroplet.FakeAPI.{Connection, JSON, RateLimit, TLS}

  @typedoc "A running fake API: its pid or registered name."
  @type api :: GenServer.server()

  @typedoc "A droplet as JSON would decode it: a map with string keys."
  @type droplet :: %{optional(String.t()) => term}

  @typedoc """
  A fault for `inject/3`; what the client sees:

    * `{:status, code}` (400..599): that status with a DigitalOcean error body
      `{"id", "message", "request_id"}`; `{:status, code, message}` the same
      with that `message` (e.g. a 403 naming the missing scope): 400 `bad_request`, 401
      `unauthorized`, 403 `forbidden`, 404 `not_found`, 422
      `unprocessable_entity`, 429 `too_many_requests` (with `retry-after: 1`),
      500 `server_error`, 502/503/504 `service_unavailable`, others `error`.
      A 401 or 429 is not counted by the rate limit.
    * `{:slow, ms}`: the normal answer after `ms` milliseconds.
    * `:html`: 200 with an HTML body and `content-type: text/html`.
    * `:truncated`: the normal answer's headers (with its full
      `content-length`) and half its body, then an orderly close.
    * `:reset`: the headers and half the body, then a TCP reset (under TLS
      too: no `close_notify` is sent).
    * `{:foreign_next, url}`: the normal page with `links.pages.next`
      replaced by `url`, even when there is only one page.
    * `:next_loop`: the normal page whose `next` link is its own URL.
    * `{:redirect, url}`: 302 with `location: url` and an empty body.
    * `:empty_with_total`: the normal page with `droplets: []` but the real
      `meta.total` (at least 1).
    * `{:json, term}`: 200 with `term` JSON-encoded as the body.
    * `{:raw, iodata}`: 200 with exactly these bytes as the body.
    * `{:huge, bytes}`: the normal page, made at least `bytes` long by a
      trailing top-level `"padding"` string field (still valid JSON).
    * `:close`: the connection is closed without an answer (logged with
      status 0).

  `:slow`, `:truncated`, `:reset`, `:foreign_next`, `:next_loop`,
  `:empty_with_total` and `:huge` modify the normal answer; when that answer
  is an error (e.g. a 400 for a bad `per_page`) the error is sent as it is,
  slowed, truncated or reset.
  """
  @type fault ::
          {:status, 400..599}
          | {:status, 400..599, String.t()}
          | {:slow, non_neg_integer}
          | :html
          | :truncated
          | :reset
          | {:foreign_next, String.t()}
          | :next_loop
          | {:redirect, String.t()}
          | :empty_with_total
          | {:json, term}
          | {:raw, iodata}
          | {:huge, non_neg_integer}
          | :close

  @typedoc """
  One logged request. `at_ms` is `System.monotonic_time(:millisecond)` and
  `unix_ms` the system time when the answer was decided; `query` is the
  decoded query string (`%{}` when it could not be decoded); `status` is the
  status sent (0 for the `:close` fault); `authorized` is whether the bearer
  token was the valid one; `fault` is the kind of the injected fault applied
  (`:status`, `:slow`, `:html`, ...) or `nil`; `headers` are the response
  headers sent (lower-case names, string values), rate-limit ones included.
  """
  @type request :: %{
          at_ms: integer,
          unix_ms: integer,
          method: String.t(),
          path: String.t(),
          query: %{optional(String.t()) => String.t()},
          status: non_neg_integer,
          authorized: boolean,
          fault: atom | nil,
          headers: %{optional(String.t()) => String.t()}
        }

  @template_path Path.expand("../../../shared/digitalocean-api/list_droplets_all.json", __DIR__)
  @external_resource @template_path
  @template @template_path |> File.read!() |> JSON.decode!() |> Map.fetch!("droplets") |> hd()

  # The GPU fields of DigitalOcean's spec: a GPU droplet carries gpu_info.
  @gpu_size_slug "gpu-h100x1-80gb"
  @gpu_info %{
    "count" => 1,
    "vram" => %{"amount" => 80, "unit" => "gib"},
    "model" => "nvidia_h100"
  }

  @max_per_page 200
  @default_per_page 20
  @filter_cache_size 64

  # ------------------------------------------------------------------ public

  @doc """
  Starts a fake API linked to the caller, listening at once.

  Options:

    * `:token` - the one valid bearer token (default `"test-token"`);
    * `:droplets` - the initial droplets (default `[]`), see `put_droplets/2`;
    * `:tls` - serve HTTPS with a fresh CA, see `ca_file/1` (default `false`);
    * `:port` - 0 (the default) picks a free port;
    * `:ip` - a loopback address to listen on (default `{127, 0, 0, 1}`;
      `{0, 0, 0, 0, 0, 0, 0, 1}` serves IPv6);
    * `:rate_limit` - `[per_hour: 5000, per_minute: 250, hour_ms: 3_600_000,
      minute_ms: 60_000]`, any subset;
    * `:keep_alive_timeout` - ms an idle connection stays open (default
      60_000);
    * `:name` - a name to register the server under.

  Raises `ArgumentError` on invalid options or droplets.
  """
  @spec start_link(keyword) :: GenServer.on_start()
  def start_link(opts \\ []) do
    opts =
      Keyword.validate!(opts,
        token: "test-token",
        droplets: [],
        tls: false,
        port: 0,
        ip: {127, 0, 0, 1},
        rate_limit: [],
        keep_alive_timeout: 60_000,
        name: nil
      )

    unless is_binary(opts[:token]) and opts[:token] != "",
      do: raise(ArgumentError, ":token must be a non-empty string")

    unless loopback?(opts[:ip]),
      do: raise(ArgumentError, ":ip must be a loopback address, got: #{inspect(opts[:ip])}")

    unless is_boolean(opts[:tls]), do: raise(ArgumentError, ":tls must be a boolean")

    unless is_integer(opts[:port]) and opts[:port] in 0..65_535,
      do: raise(ArgumentError, ":port must be an integer in 0..65535")

    unless is_integer(opts[:keep_alive_timeout]) and opts[:keep_alive_timeout] > 0,
      do: raise(ArgumentError, ":keep_alive_timeout must be a positive integer")

    init_arg = %{
      opts: opts,
      entries: prepare_all!(opts[:droplets]),
      rate_limit: RateLimit.new(opts[:rate_limit])
    }

    case opts[:name] do
      nil -> GenServer.start_link(__MODULE__, init_arg)
      name -> GenServer.start_link(__MODULE__, init_arg, name: name)
    end
  end

  @doc """
  The base URL, `"http://127.0.0.1:PORT"` or `"https://127.0.0.1:PORT"`
  (`[::1]` when listening on IPv6), without a trailing slash.
  """
  @spec url(api) :: String.t()
  def url(api), do: GenServer.call(api, :url)

  @doc """
  The path of a PEM file holding the CA certificate that signed the server's
  certificate when started with `tls: true`, else `nil`. The file is deleted
  when the server stops.
  """
  @spec ca_file(api) :: Path.t() | nil
  def ca_file(api), do: GenServer.call(api, :ca_file)

  @doc """
  Builds one droplet in the full JSON shape of DigitalOcean's example
  response (the first droplet of `list_droplets_all.json`), with string keys.

  Options:

    * `:id` (required) - a positive integer;
    * `:name` (required) - a string;
    * `:status` - default `"active"` (the API uses `new`, `active`, `off`,
      `archive`);
    * `:tags` - a list of strings, default `[]`; `nil` leaves `tags` out,
      as the API does for a token without `tag:read`;
    * `:region` - the region slug, default `"nyc3"`;
    * `:gpu` - `true` makes it a GPU droplet, carrying a `gpu_info` object
      (listed only with `type=gpus`), default `false`;
    * `:size_slug` - default `"s-1vcpu-1gb"`, `"gpu-h100x1-80gb"` for a GPU
      droplet;
    * `:vpc_uuid` - default the example's; `nil` leaves `vpc_uuid` out, as
      the API does for a token without `vpc:read`;
    * `:private_ip` - the private IPv4 address, or `nil` for none; by default
      a loopback address derived from the id (`127.x.y.z`, `z` in 1..254,
      distinct for ids below 16,646,144);
    * `:public_ip` - the public IPv4 address, default `nil` (none);
    * `:ipv6` - the (public) IPv6 address, default `nil` (none); only
      `"::1"` is loopback.

  Every address must be loopback, or `ArgumentError` is raised.

      iex> d = LibclusterDroplet.FakeAPI.droplet(id: 7, name: "n7", private_ip: "127.0.0.7")
      iex> {d["id"], d["status"], d["region"]["slug"], d["networks"]["v4"]}
      {7, "active", "nyc3",
       [%{"gateway" => "nil", "ip_address" => "127.0.0.7", "netmask" => "255.0.0.0", "type" => "private"}]}
  """
  @spec droplet(keyword) :: droplet
  def droplet(opts) do
    opts =
      Keyword.validate!(opts, [
        :id,
        :name,
        status: "active",
        tags: [],
        region: "nyc3",
        gpu: false,
        size_slug: nil,
        vpc_uuid: @template["vpc_uuid"],
        private_ip: :derived,
        public_ip: nil,
        ipv6: nil
      ])

    id = opts[:id]
    name = opts[:name]

    unless is_integer(id) and id > 0,
      do: raise(ArgumentError, "droplet :id must be a positive integer, got: #{inspect(id)}")

    unless is_binary(name),
      do: raise(ArgumentError, "droplet :name must be a string, got: #{inspect(name)}")

    unless opts[:tags] == nil or (is_list(opts[:tags]) and Enum.all?(opts[:tags], &is_binary/1)),
      do: raise(ArgumentError, "droplet :tags must be a list of strings or nil")

    unless is_boolean(opts[:gpu]), do: raise(ArgumentError, "droplet :gpu must be a boolean")

    size_slug =
      opts[:size_slug] || if(opts[:gpu], do: @gpu_size_slug, else: @template["size_slug"])

    for {key, value} <- [status: opts[:status], region: opts[:region], size_slug: size_slug] do
      unless is_binary(value), do: raise(ArgumentError, "droplet #{key} must be a string")
    end

    unless opts[:vpc_uuid] == nil or is_binary(opts[:vpc_uuid]),
      do: raise(ArgumentError, "droplet :vpc_uuid must be a string or nil")

    private_ip = if opts[:private_ip] == :derived, do: derived_ip(id), else: opts[:private_ip]
    public_ip = opts[:public_ip]
    ipv6 = opts[:ipv6]

    for {ip, family} <- [{private_ip, :inet}, {public_ip, :inet}, {ipv6, :inet6}], ip != nil do
      check_loopback!(ip, family)
    end

    v4 =
      for {ip, type, gateway} <- [
            {private_ip, "private", "nil"},
            {public_ip, "public", "127.0.0.1"}
          ],
          ip != nil do
        %{"ip_address" => ip, "netmask" => "255.0.0.0", "gateway" => gateway, "type" => type}
      end

    v6 =
      for ip <- [ipv6], ip != nil do
        %{"ip_address" => ip, "netmask" => 128, "gateway" => "::1", "type" => "public"}
      end

    features =
      ["backups"] ++
        if(private_ip, do: ["private_networking"], else: []) ++
        if(ipv6, do: ["ipv6"], else: [])

    region = %{
      @template["region"]
      | "slug" => opts[:region],
        "name" => region_name(opts[:region])
    }

    %{
      @template
      | "id" => id,
        "name" => name,
        "status" => opts[:status],
        "tags" => opts[:tags],
        "region" => region,
        "size_slug" => size_slug,
        "size" => %{@template["size"] | "slug" => size_slug},
        "vpc_uuid" => opts[:vpc_uuid],
        "networks" => %{"v4" => v4, "v6" => v6},
        "features" => features
    }
    |> Map.merge(if opts[:gpu], do: %{"gpu_info" => @gpu_info}, else: %{})
    # A field the token may not see is left out, not null, as the API does.
    |> Map.reject(fn {key, value} -> key in ["tags", "vpc_uuid"] and value == nil end)
  end

  @doc """
  Replaces all droplets, in this order. A droplet is any map with string
  keys (normally from `droplet/1`); only its `id` is required. Its JSON is
  encoded here, in the caller. Raises `ArgumentError` if a droplet is not
  JSON-encodable or has a non-loopback `ip_address`.
  """
  @spec put_droplets(api, [droplet]) :: :ok
  def put_droplets(api, droplets), do: GenServer.call(api, {:put, prepare_all!(droplets)})

  @doc "Appends a droplet, or replaces the droplets with its id where they are."
  @spec add_droplet(api, droplet) :: :ok
  def add_droplet(api, droplet), do: GenServer.call(api, {:add, prepare!(droplet)})

  @doc "Removes the droplets with this id."
  @spec remove_droplet(api, term) :: :ok | {:error, :not_found}
  def remove_droplet(api, id), do: GenServer.call(api, {:remove, id})

  @doc """
  Changes the droplets with this id in place: a map is merged into each
  (`%{"status" => "off"}`), a function maps each to its new value.
  """
  @spec update_droplet(api, term, map | (droplet -> droplet)) :: :ok | {:error, :not_found}
  def update_droplet(api, id, change) when is_map(change) or is_function(change, 1) do
    case GenServer.call(api, {:update, id, change}) do
      {:raise, exception} -> raise exception
      reply -> reply
    end
  end

  @doc """
  The current droplets, in order, as JSON decodes them. The server keeps
  only their JSON, which this decodes in the caller: about a second for
  10,000 droplets.
  """
  @spec droplets(api) :: [droplet]
  def droplets(api) do
    api |> GenServer.call(:encoded_droplets) |> Enum.map(&JSON.decode!/1)
  end

  @doc """
  Queues `fault` for the next matching `GET /v2/droplets` requests.

  Options: `times:` how many requests it applies to (a positive integer or
  `:infinity`, default 1); `page:` only requests for this page number
  (default `:any`; a request without `page` asks for page 1).
  Raises `ArgumentError` for an unknown fault.
  """
  @spec inject(api, fault, keyword) :: :ok
  def inject(api, fault, opts \\ []) do
    opts = Keyword.validate!(opts, times: 1, page: :any)

    unless opts[:times] == :infinity or (is_integer(opts[:times]) and opts[:times] > 0),
      do: raise(ArgumentError, "times must be a positive integer or :infinity")

    unless opts[:page] == :any or (is_integer(opts[:page]) and opts[:page] > 0),
      do: raise(ArgumentError, "page must be a positive integer or :any")

    GenServer.call(api, {:inject, compile_fault!(fault), opts[:times], opts[:page]})
  end

  @doc "Drops every queued fault."
  @spec clear_faults(api) :: :ok
  def clear_faults(api), do: GenServer.call(api, :clear_faults)

  @doc "The logged requests, oldest first."
  @spec requests(api) :: [request]
  def requests(api), do: api |> GenServer.call(:requests) |> Enum.reverse()

  @doc "How many requests were logged since the start or `reset_requests/1`."
  @spec request_count(api) :: non_neg_integer
  def request_count(api), do: GenServer.call(api, :request_count)

  @doc "Makes `token` the one valid bearer token from now on (a rotation: the old one gets 401)."
  @spec set_token(api, String.t()) :: :ok
  def set_token(api, token) when is_binary(token) and token != "",
    do: GenServer.call(api, {:set_token, token})

  @doc "Empties the request log (the rate limit windows are kept)."
  @spec reset_requests(api) :: :ok
  def reset_requests(api), do: GenServer.call(api, :reset_requests)

  @doc """
  Changes some rate limit settings (`per_hour`, `per_minute`, `hour_ms`,
  `minute_ms`) and empties both windows.
  """
  @spec set_rate_limit(api, keyword) :: :ok
  def set_rate_limit(api, opts) do
    case GenServer.call(api, {:set_rate_limit, opts}) do
      {:raise, exception} -> raise exception
      :ok -> :ok
    end
  end

  @doc "Stops the server, closing every connection and deleting the CA file."
  @spec stop(api) :: :ok
  def stop(api), do: GenServer.stop(api)

  # -------------------------------------------------------------- droplets

  defp derived_ip(id) do
    n = rem(id, 254 * 256 * 256)
    "127.#{div(n, 254 * 256)}.#{rem(div(n, 254), 256)}.#{rem(n, 254) + 1}"
  end

  @region_names %{
    "ams3" => "Amsterdam 3",
    "blr1" => "Bangalore 1",
    "fra1" => "Frankfurt 1",
    "lon1" => "London 1",
    "nyc1" => "New York 1",
    "nyc2" => "New York 2",
    "nyc3" => "New York 3",
    "sfo2" => "San Francisco 2",
    "sfo3" => "San Francisco 3",
    "sgp1" => "Singapore 1",
    "syd1" => "Sydney 1",
    "tor1" => "Toronto 1"
  }

  defp region_name(slug), do: Map.get(@region_names, slug, slug)

  defp check_loopback!(ip, family) do
    parsed = if is_binary(ip), do: :inet.parse_strict_address(String.to_charlist(ip))

    case parsed do
      {:ok, addr} when tuple_size(addr) == 4 and family in [:inet, :any] ->
        if not loopback?(addr), do: raise(ArgumentError, "#{inspect(ip)} is not loopback")

      {:ok, addr} when tuple_size(addr) == 8 and family in [:inet6, :any] ->
        if not loopback?(addr), do: raise(ArgumentError, "#{inspect(ip)} is not loopback")

      _ ->
        raise ArgumentError, "#{inspect(ip)} is not a loopback #{family} address"
    end
  end

  defp loopback?({127, _, _, _}), do: true
  defp loopback?({0, 0, 0, 0, 0, 0, 0, 1}), do: true
  defp loopback?(_), do: false

  # What the server keeps per droplet: the id, the encoded JSON (the only
  # copy of the droplet) and what the filters look at.
  defp prepare!(droplet) when is_map(droplet) do
    unless Map.has_key?(droplet, "id"),
      do: raise(ArgumentError, "a droplet needs an \"id\": #{inspect(droplet, limit: 5)}")

    for ip <- droplet_ips(droplet), is_binary(ip), do: check_loopback!(ip, :any)

    name = droplet["name"]
    tags = droplet["tags"]

    {droplet["id"], JSON.encode!(droplet), if(is_binary(name), do: String.downcase(name)),
     if(is_list(tags), do: tags, else: []), is_map(droplet["gpu_info"])}
  end

  defp prepare!(other),
    do: raise(ArgumentError, "a droplet must be a map, got: #{inspect(other)}")

  defp prepare_all!(droplets) when is_list(droplets), do: Enum.map(droplets, &prepare!/1)

  defp prepare_all!(other),
    do: raise(ArgumentError, "droplets must be a list, got: #{inspect(other, limit: 5)}")

  defp droplet_ips(%{"networks" => %{} = networks}) do
    for family <- ["v4", "v6"],
        list = Map.get(networks, family),
        is_list(list),
        %{"ip_address" => ip} <- list,
        do: ip
  end

  defp droplet_ips(_), do: []

  # ------------------------------------------------------------------ faults

  @error_ids %{
    400 => {"bad_request", "The request could not be understood."},
    401 => {"unauthorized", "Unable to authenticate you."},
    403 => {"forbidden", "You do not have access for the attempted action."},
    404 => {"not_found", "The resource you were accessing could not be found."},
    422 => {"unprocessable_entity", "The request could not be processed."},
    429 => {"too_many_requests", "API Rate limit exceeded."},
    500 => {"server_error", "Server was unable to give you a response."},
    502 => {"service_unavailable", "Bad gateway."},
    503 => {"service_unavailable", "Service is temporarily unavailable."},
    504 => {"service_unavailable", "Gateway timeout."}
  }

  # Validated and, where it helps, pre-encoded in the caller.
  defp compile_fault!({:status, code} = f) when is_integer(code) and code in 400..599, do: f

  defp compile_fault!({:status, code, message} = f)
       when is_integer(code) and code in 400..599 and is_binary(message),
       do: f

  defp compile_fault!({:slow, ms} = f) when is_integer(ms) and ms >= 0, do: f
  defp compile_fault!({:foreign_next, url} = f) when is_binary(url), do: f
  defp compile_fault!({:redirect, url} = f) when is_binary(url), do: f
  defp compile_fault!({:json, term}), do: {:json, JSON.encode!(term)}
  defp compile_fault!({:raw, iodata}), do: {:raw, IO.iodata_to_binary(iodata)}
  defp compile_fault!({:huge, bytes} = f) when is_integer(bytes) and bytes >= 0, do: f

  defp compile_fault!(f)
       when f in [:html, :truncated, :reset, :next_loop, :empty_with_total, :close],
       do: f

  defp compile_fault!(f), do: raise(ArgumentError, "unknown fault: #{inspect(f)}")

  defp fault_kind(f) when is_atom(f), do: f
  defp fault_kind(f) when is_tuple(f), do: elem(f, 0)

  # ---------------------------------------------------------------- server

  @impl true
  def init(%{opts: opts, entries: entries, rate_limit: rate_limit}) do
    Process.flag(:trap_exit, true)
    transport = if opts[:tls], do: :ssl, else: :tcp

    with {:ok, listen, ca_file} <- listen(transport, opts),
         {:ok, port} <- port(transport, listen) do
      host =
        case opts[:ip] do
          {127, _, _, _} = ip -> ip |> :inet.ntoa() |> to_string()
          _ipv6 -> "[::1]"
        end

      scheme = if transport == :ssl, do: "https", else: "http"

      acceptor =
        Connection.start_acceptor(self(), transport, listen,
          keep_alive_timeout: opts[:keep_alive_timeout]
        )

      {:ok,
       %{
         url: "#{scheme}://#{host}:#{port}",
         ca_file: ca_file,
         transport: transport,
         listen: listen,
         acceptor: acceptor,
         token: opts[:token],
         entries: List.to_tuple(entries),
         filter_cache: %{},
         faults: [],
         log: [],
         count: 0,
         rate_limit: rate_limit
       }}
    else
      {:error, reason} -> {:stop, reason}
    end
  end

  defp listen(:tcp, opts) do
    case :gen_tcp.listen(opts[:port], listen_opts(opts)) do
      {:ok, listen} -> {:ok, listen, nil}
      error -> error
    end
  end

  defp listen(:ssl, opts) do
    {:ok, _} = Application.ensure_all_started(:ssl)
    material = TLS.generate()
    ca_file = TLS.write_ca_file!(material.ca_pem)

    tls_opts = [
      cert: material.cert_der,
      key: material.key,
      versions: [:"tlsv1.3", :"tlsv1.2"],
      alpn_preferred_protocols: ["http/1.1"],
      # A client refusing the certificate is a case the tests provoke on
      # purpose; its alert is not worth a log line at :notice.
      log_level: :warning
    ]

    case :ssl.listen(opts[:port], listen_opts(opts) ++ tls_opts) do
      {:ok, listen} ->
        {:ok, listen, ca_file}

      error ->
        File.rm(ca_file)
        error
    end
  end

  defp listen_opts(opts) do
    family = if tuple_size(opts[:ip]) == 8, do: [:inet6], else: []

    family ++
      [
        :binary,
        ip: opts[:ip],
        active: false,
        reuseaddr: true,
        backlog: 1024,
        nodelay: true,
        send_timeout: 30_000,
        send_timeout_close: true
      ]
  end

  defp port(:tcp, listen), do: :inet.port(listen)

  defp port(:ssl, listen) do
    with {:ok, {_ip, port}} <- :ssl.sockname(listen), do: {:ok, port}
  end

  @impl true
  def handle_call({:request, req}, _from, state) do
    {plan, state} = decide(req, state)
    {:reply, plan, state}
  end

  def handle_call(:url, _from, state), do: {:reply, state.url, state}
  def handle_call(:ca_file, _from, state), do: {:reply, state.ca_file, state}

  def handle_call({:put, entries}, _from, state),
    do: {:reply, :ok, set_entries(state, entries)}

  def handle_call({:add, {id, _, _, _, _} = entry}, _from, state) do
    entries = Tuple.to_list(state.entries)

    entries =
      if List.keymember?(entries, id, 0),
        do: Enum.map(entries, fn e -> if elem(e, 0) == id, do: entry, else: e end),
        else: entries ++ [entry]

    {:reply, :ok, set_entries(state, entries)}
  end

  def handle_call({:remove, id}, _from, state) do
    entries = Tuple.to_list(state.entries)

    case Enum.reject(entries, &(elem(&1, 0) == id)) do
      ^entries -> {:reply, {:error, :not_found}, state}
      kept -> {:reply, :ok, set_entries(state, kept)}
    end
  end

  def handle_call({:update, id, change}, _from, state) do
    entries = Tuple.to_list(state.entries)

    if List.keymember?(entries, id, 0) do
      # Done here rather than in the caller so a read-modify-write cannot
      # interleave with another update.
      entries =
        Enum.map(entries, fn
          {^id, json, _, _, _} ->
            droplet = JSON.decode!(json)

            prepare!(
              if is_map(change),
                do: Map.merge(droplet, string_keys(change)),
                else: change.(droplet)
            )

          entry ->
            entry
        end)

      {:reply, :ok, set_entries(state, entries)}
    else
      {:reply, {:error, :not_found}, state}
    end
  rescue
    exception -> {:reply, {:raise, exception}, state}
  end

  def handle_call(:encoded_droplets, _from, state),
    do: {:reply, state.entries |> Tuple.to_list() |> Enum.map(&elem(&1, 1)), state}

  def handle_call({:inject, fault, times, page}, _from, state),
    do: {:reply, :ok, %{state | faults: state.faults ++ [{fault, times, page}]}}

  def handle_call(:clear_faults, _from, state), do: {:reply, :ok, %{state | faults: []}}
  def handle_call(:requests, _from, state), do: {:reply, state.log, state}
  def handle_call(:request_count, _from, state), do: {:reply, state.count, state}
  def handle_call({:set_token, token}, _from, state), do: {:reply, :ok, %{state | token: token}}
  def handle_call(:reset_requests, _from, state), do: {:reply, :ok, %{state | log: [], count: 0}}

  def handle_call({:set_rate_limit, opts}, _from, state) do
    {:reply, :ok, %{state | rate_limit: RateLimit.update(state.rate_limit, opts)}}
  rescue
    exception -> {:reply, {:raise, exception}, state}
  end

  @impl true
  def handle_info({:EXIT, pid, reason}, %{acceptor: pid} = state), do: {:stop, reason, state}
  def handle_info({:EXIT, _pid, _reason}, state), do: {:noreply, state}
  def handle_info(_msg, state), do: {:noreply, state}

  @impl true
  def terminate(_reason, state) do
    # Killing the acceptor kills every connection process linked to it.
    Process.exit(state.acceptor, :kill)

    case state.transport do
      :tcp -> :gen_tcp.close(state.listen)
      :ssl -> :ssl.close(state.listen)
    end

    if state.ca_file, do: File.rm(state.ca_file)
    :ok
  end

  # `%{status: "off"}` must replace "status", not sit beside it as a second
  # key that JSON would also call "status".
  defp string_keys(map), do: Map.new(map, fn {k, v} -> {to_string(k), v} end)

  defp set_entries(state, entries),
    do: %{state | entries: List.to_tuple(entries), filter_cache: %{}}

  # ---------------------------------------------------------------- deciding

  defp decide(req, state) do
    now = System.monotonic_time(:millisecond)
    unix_ms = System.system_time(:millisecond)
    rl = RateLimit.prune(state.rate_limit, now)
    authorized? = authorized?(req.authorization, state.token)
    query = decode_query(req.query)
    droplets_route? = req.method == "GET" and req.path == "/v2/droplets"

    {response, fault, state} =
      cond do
        not authorized? ->
          {error(401), nil, state}

        (limit = RateLimit.check(rl, now)) != :ok ->
          {rate_limited(limit), nil, state}

        droplets_route? ->
          {fault, state} = take_fault(state, fault_page(query))
          {response, state} = respond(state, query, fault)
          {response, fault, state}

        true ->
          {error(404), nil, state}
      end

    rl = if response.status in [401, 429, 0], do: rl, else: RateLimit.count(rl, now)

    entry = %{
      at_ms: now,
      unix_ms: unix_ms,
      method: req.method,
      path: req.path,
      query: if(match?({:ok, _}, query), do: elem(query, 1), else: %{}),
      status: response.status,
      authorized: authorized?,
      fault: fault && fault_kind(fault)
    }

    plan = %{
      response
      | headers: response.headers ++ RateLimit.headers(rl, now, unix_ms)
    }

    # The rate-limit headers as sent, so tests can check a client obeyed them.
    entry =
      Map.put(
        entry,
        :headers,
        for({k, v} <- plan.headers, into: %{}, do: {String.downcase(to_string(k)), to_string(v)})
      )

    {plan, %{state | rate_limit: rl, log: [entry | state.log], count: state.count + 1}}
  end

  defp authorized?(header, token) when is_binary(header) do
    case String.split(header, " ", parts: 2) do
      [scheme, given] -> String.downcase(scheme) == "bearer" and String.trim(given) == token
      _ -> false
    end
  end

  defp authorized?(_header, _token), do: false

  defp decode_query(query) do
    {:ok, URI.decode_query(query)}
  rescue
    ArgumentError -> {:error, :malformed}
  end

  # The page a fault can be aimed at; an unparsable one matches only :any.
  defp fault_page({:ok, %{"page" => page}}) do
    case Integer.parse(page) do
      {n, ""} -> n
      _ -> nil
    end
  end

  defp fault_page(_), do: 1

  defp take_fault(state, page) do
    case Enum.split_while(state.faults, fn {_, _, p} -> p != :any and p != page end) do
      {_, []} ->
        {nil, state}

      {before, [{fault, times, p} | later]} ->
        left =
          case times do
            :infinity -> [{fault, :infinity, p}]
            1 -> []
            n -> [{fault, n - 1, p}]
          end

        {fault, %{state | faults: before ++ left ++ later}}
    end
  end

  defp rate_limited(:hourly), do: error(429)

  defp rate_limited({:burst, seconds}),
    do: error(429, [{"retry-after", Integer.to_string(seconds)}])

  defp error(status, extra_headers \\ []) do
    {id, message} = Map.get(@error_ids, status, {"error", "Error #{status}."})
    error(status, id, message, extra_headers)
  end

  defp error_id(status), do: @error_ids |> Map.get(status, {"error", nil}) |> elem(0)

  defp error(status, id, message, extra_headers \\ []) do
    body =
      object([
        {"id", JSON.encode_to_iodata!(id)},
        {"message", JSON.encode_to_iodata!(message)},
        {"request_id", JSON.encode_to_iodata!(request_id())}
      ])

    response(status, body, extra_headers)
  end

  defp response(status, body, extra_headers \\ [], content_type \\ "application/json") do
    %{
      status: status,
      headers: [{"content-type", content_type <> "; charset=utf-8"} | extra_headers],
      body: body,
      action: :respond,
      delay_ms: 0
    }
  end

  defp request_id do
    <<a::32, b::16, c::16, d::16, e::48>> = :rand.bytes(16)

    [<<a::32>>, <<b::16>>, <<c::16>>, <<d::16>>, <<e::48>>]
    |> Enum.map_join("-", &Base.encode16(&1, case: :lower))
  end

  # A JSON object from already-encoded values, keeping the key order.
  defp object(pairs) do
    [
      ?{,
      Enum.map_intersperse(pairs, ?,, fn {k, v} -> [JSON.encode_to_iodata!(k), ?: | v] end),
      ?}
    ]
  end

  # --------------------------------------------------------------- answering

  defp respond(state, query, fault) do
    case fault do
      {:status, 429} -> {error(429, [{"retry-after", "1"}]), state}
      {:status, code} -> {error(code), state}
      {:status, code, message} -> {error(code, error_id(code), message), state}
      :html -> {response(200, html_page(), [], "text/html"), state}
      {:redirect, url} -> {response(302, "", [{"location", url}]), state}
      {:json, json} -> {response(200, json), state}
      {:raw, raw} -> {response(200, raw), state}
      :close -> {%{response(0, "") | action: :close}, state}
      {:slow, ms} -> modify(listing(state, query, nil), action: :slow, delay_ms: ms)
      :truncated -> modify(listing(state, query, nil), action: :truncated)
      :reset -> modify(listing(state, query, nil), action: :reset)
      other -> listing(state, query, other)
    end
  end

  defp modify({response, state}, changes), do: {Map.merge(response, Map.new(changes)), state}

  # The normal answer to a listing, altered by the faults that alter pages.
  defp listing(state, query, fault) do
    with {:ok, q} <- query_ok(query),
         {:ok, per_page} <- positive(q, "per_page", @default_per_page),
         {:ok, page} <- positive(q, "page", 1),
         {:ok, filter} <- filter(q) do
      page_response(state, min(per_page, @max_per_page), page, filter, fault)
    else
      error_response -> {error_response, state}
    end
  end

  defp query_ok({:ok, q}), do: {:ok, q}
  defp query_ok(_), do: error(400, "bad_request", "The query string is malformed.")

  defp positive(q, key, default) do
    case Map.fetch(q, key) do
      :error ->
        {:ok, default}

      {:ok, text} ->
        case Integer.parse(text) do
          {n, ""} when n >= 1 -> {:ok, n}
          _ -> error(400, "bad_request", "#{key} must be a positive integer.")
        end
    end
  end

  defp filter(%{"tag_name" => _} = q) when is_map_key(q, "name") or is_map_key(q, "type"),
    do:
      error(
        422,
        "unprocessable_entity",
        "tag_name cannot be combined with name or type."
      )

  defp filter(q) do
    case Map.get(q, "type", "droplets") do
      type when type in ["droplets", "gpus"] ->
        name = Map.get(q, "name")

        {:ok,
         %{
           tag: Map.get(q, "tag_name"),
           name: name && String.downcase(name),
           gpus?: type == "gpus",
           # The links repeat exactly the filters the client sent.
           params:
             Enum.filter(
               [{"tag_name", q["tag_name"]}, {"name", name}, {"type", q["type"]}],
               &elem(&1, 1)
             )
         }}

      _ ->
        error(400, "bad_request", "type must be droplets or gpus.")
    end
  end

  defp page_response(state, per_page, page, filter, fault) do
    {matching, state} = matching(state, filter)
    total = tuple_size(matching)
    last_page = max(div(total + per_page - 1, per_page), 1)
    from = (page - 1) * per_page
    upto = min(from + per_page, total) - 1

    droplets =
      if fault == :empty_with_total or from >= total,
        do: [],
        else: Enum.map(from..upto//1, &elem(elem(matching, &1), 1))

    link = fn p -> link(state.url, p, per_page, filter.params) end

    pages =
      if(page > 1, do: [{"first", link.(1)}, {"prev", link.(min(page - 1, last_page))}], else: []) ++
        if page < last_page, do: [{"next", link.(page + 1)}, {"last", link.(last_page)}], else: []

    pages =
      case fault do
        {:foreign_next, url} -> put_pair(pages, "next", url)
        :next_loop -> put_pair(pages, "next", link.(page))
        _ -> pages
      end

    total = if fault == :empty_with_total, do: max(total, 1), else: total

    fields = [
      {"droplets", [?[, Enum.intersperse(droplets, ?,), ?]]},
      {"links",
       object([
         {"pages", object(Enum.map(pages, fn {k, v} -> {k, JSON.encode_to_iodata!(v)} end))}
       ])},
      {"meta", object([{"total", Integer.to_string(total)}])}
    ]

    body =
      case fault do
        {:huge, bytes} ->
          # `,"padding":""` adds 13 bytes besides the padding itself.
          size = IO.iodata_length(object(fields))
          object(fields ++ [{"padding", [?", :binary.copy("x", max(bytes - size - 13, 0)), ?"]}])

        _ ->
          object(fields)
      end

    {response(200, body), state}
  end

  defp put_pair(pairs, key, value) do
    if List.keymember?(pairs, key, 0),
      do: List.keyreplace(pairs, key, 0, {key, value}),
      else: pairs ++ [{key, value}]
  end

  defp link(url, page, per_page, params) do
    query = URI.encode_query([{"page", page}, {"per_page", per_page} | params])
    "#{url}/v2/droplets?#{query}"
  end

  # The droplets a filter selects, as a tuple for O(1) slicing; cached
  # because a client walks every page of the same filter in turn.
  defp matching(state, filter) do
    key = Map.delete(filter, :params)

    case state.filter_cache do
      %{^key => tuple} ->
        {tuple, state}

      cache ->
        tuple =
          state.entries
          |> Tuple.to_list()
          |> Enum.filter(fn {_id, _json, name, tags, gpu?} ->
            gpu? == filter.gpus? and (filter.tag == nil or filter.tag in tags) and
              (filter.name == nil or filter.name == name)
          end)
          |> List.to_tuple()

        # Bounded: a client sending ever-new names cannot grow it forever.
        cache = if map_size(cache) >= @filter_cache_size, do: %{}, else: cache
        {tuple, %{state | filter_cache: Map.put(cache, key, tuple)}}
    end
  end

  defp html_page do
    """
    <!DOCTYPE html>
    <html><head><title>502 Bad Gateway</title></head>
    <body><h1>Bad Gateway</h1><p>The web server reported a bad gateway error.</p></body>
    </html>
    """
  end
end
