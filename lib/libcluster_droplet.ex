defmodule LibclusterDroplet do
  @moduledoc """
  The DigitalOcean side of `Cluster.Strategy.Droplet`, usable on its own:
  list droplets through the API and TCP-probe addresses, both done by the
  Rust NIF off the Erlang schedulers.

      iex> LibclusterDroplet.list_droplets(token: token, tag_name: "web", network: :private)
      {:ok, %LibclusterDroplet.Listing{droplets: [%{name: "web-1", address: "10.0.0.2", ...}], ...}}

      iex> LibclusterDroplet.probe(["10.0.0.2", "10.0.0.3"], 4000, timeout: 500)
      [{"10.0.0.2", {:ok, 312}}, {"10.0.0.3", {:error, :timeout}}]

  Every function returns `{:error, reason}` on failure; see
  `LibclusterDroplet.Error` for the reasons and `LibclusterDroplet.Error.format/1`
  for readable messages.

  Each call runs on a thread of the NIF's own and answers the calling process
  with a message, so a slow API never occupies an Erlang scheduler. The
  `start_*` functions expose that directly for callers, such as the strategy,
  that must stay responsive while a call is in flight; they return a
  `LibclusterDroplet.Call`, and a call whose caller dies or drops it is
  cancelled.

  All calls share one thread budget per VM: at most 64 calls in flight
  (another is refused at once with `{:error, :busy}`), each on a thread of
  its own, and 1,024 helper threads among them. A call starts with the
  helpers it asks for, at most 128 (an eighth, so that calls arriving
  together share them) and what is free, down to none, and keeps them (see
  `LibclusterDroplet.Call`'s `:concurrency`, then what it runs at least);
  between its items it grows towards an even split of the helpers among the
  calls in flight as they free up, and gives back the helpers it grew beyond
  that. Host names are resolved on 4 threads for the whole VM.

  """

  alias LibclusterDroplet.{Call, Listing, Native, Token}

  @default_api_url "https://api.digitalocean.com"

  @typedoc "An IPv4 or IPv6 address literal, e.g. `\"10.0.0.2\"` or `\"2604:a880::1\"`."
  @type address :: String.t()

  @typedoc """
  A droplet as the NIF returns it: only the fields clustering needs.
  `address` is the one selected for the requested network and IP version
  (`nil` for droplets that are not `:active` or have no such address).
  """
  @type droplet :: %{
          id: non_neg_integer(),
          name: String.t(),
          status: :new | :active | :off | :archive | String.t(),
          tags: [String.t()],
          region: String.t() | nil,
          vpc_uuid: String.t() | nil,
          v4: [{address(), :public | :private | String.t()}],
          v6: [{address(), :public | :private | String.t()}],
          address: address() | nil
        }

  @typedoc "The rate-limit headers of the API's last response, when it sent them."
  @type rate_limit :: %{
          limit: non_neg_integer() | nil,
          remaining: non_neg_integer() | nil,
          reset: non_neg_integer() | nil,
          retry_after: non_neg_integer() | nil
        }

  @type probe_result ::
          {:ok, connect_us :: non_neg_integer()}
          | {:error, :timeout | :refused | :unreachable | :invalid_address | {:io, String.t()}}

  # The NIF's own default for a listing's deadline, used when `nil` is given.
  @default_deadline 60_000
  # Beyond the listing's own deadline, which the NIF enforces: only a lost
  # reply could run into it.
  @reply_grace 5_000

  @list_keys [
    :token,
    api_url: @default_api_url,
    tag_name: nil,
    name: nil,
    gpus: false,
    network: nil,
    ipv6: false,
    ca_file: nil,
    per_page: 200,
    connect_timeout: 5_000,
    request_timeout: 15_000,
    deadline: @default_deadline,
    max_body_bytes: 4 * 1024 * 1024,
    max_pages: 1_000,
    max_droplets: 10_000,
    max_listing_bytes: 32 * 1024 * 1024,
    max_string_bytes: 1_024,
    max_tags_per_droplet: 1_000,
    max_addresses_per_droplet: 64,
    page_concurrency: 4,
    keep_alive: 3_600_000
  ]

  @doc """
  Lists droplets, following every page, and returns `{:ok, listing}` or
  `{:error, reason}`. All or nothing: if one page fails, the listing fails.

  Options:

    * `:token` (required) - a DigitalOcean API token with `droplet:read`,
      in any of the forms of `LibclusterDroplet.Token` (`{:system, "VAR"}`,
      `{:file, path}`, `{m, f, a}`, a zero-arity function or a string).
    * `:api_url` - default `"#{@default_api_url}"`.
    * `:tag_name` / `:name` - filter by tag, or by exact (case-insensitive)
      droplet name. Not both. `:tag_name` may be a list: droplets carrying
      any of the tags, one listing per tag (the API takes one tag at a
      time), merged with each droplet once. Filtering by tag needs the
      token's `tag:read` scope.
    * `:gpus` - `false` (the default: the API leaves GPU droplets out),
      `true` (GPU droplets too, one more listing, `type=gpus`) or `:only`
      (only GPU droplets). The API cannot take a tag together with `type`,
      so with `:tag_name` the GPU listing lists every GPU droplet and keeps
      those carrying one of the tags; one listed without its `tags` fails
      the listing with `:tags_unknown` (the token lacks `tag:read`).
    * `:network` (`:private` or `:public`) and `:ipv6` (default `false`) - when
      `:network` is given, each droplet's `:address` is the one selected.
    * `:ca_file` - a PEM file of extra CA certificates to trust, on top of the
      bundled Mozilla roots. TLS verification cannot be turned off.
    * `:per_page` - default 200 (the API's maximum).
    * `:connect_timeout`, `:request_timeout` (per HTTP request) and
      `:deadline` (the whole listing, reading `:ca_file` included), in
      milliseconds.
    * `:max_body_bytes` (default 4 MiB per response, eight times a full
      page of 200 droplets) and `:max_pages` (default 1,000) - caps.
    * `:page_concurrency` - pages fetched at once after the first (default
      4, at most 64), fewer when the NIF's thread budget is short.
    * `:max_droplets` - default 10,000: a listing with more droplets fails
      with `{:too_many_droplets, max}`, as soon as page 1's `meta.total`
      says so, or as the pages arrive.
    * `:max_listing_bytes` (default 32 MiB), `:max_string_bytes` (default
      1,024), `:max_tags_per_droplet` (default 1,000) and
      `:max_addresses_per_droplet` (default 64, `networks.v4` and
      `networks.v6` together) - what a listing may keep, checked while each
      page is parsed: past one, the listing fails with
      `{:listing_too_large, {bound, limit}}`, `bound` the option's name,
      before anything past the bound is built. `:max_listing_bytes` counts
      the bytes of every string kept (names, tags, region slugs, statuses,
      VPC ids, addresses) plus 32 for each, and 64 per droplet: about 520
      bytes for a typical droplet, so a listing's memory follows it, not
      what the server sends. `:max_string_bytes` bounds each such string.
    * `:keep_alive` - how long, in milliseconds, an idle connection to the
      API is kept for the next listing (default 3,600,000, an hour; 0 keeps
      none). Make it at least the longest wait between two listings, or
      each listing pays DNS, TCP and TLS again.

  Several listings (tags, GPU droplets) are made one after the other
  within the one `:deadline`, all or nothing: the first failure fails the
  whole; `requests` counts them all and `total` is the sum of their
  `meta.total`.

  A page listing more droplets than `:per_page` fails the listing
  (`{:inconsistent, _}`), as does a `meta.total` that changes while the
  pages are fetched, twice in a row (a droplet deleted mid-listing shifts
  the pages, and one would be missed): after the first change the listing
  starts over.
  """
  @spec list_droplets(keyword()) ::
          {:ok, Listing.t()} | {:error, LibclusterDroplet.Error.reason()}
  def list_droplets(opts) when is_list(opts) do
    with {:ok, request} <- list_request(opts),
         {:ok, call} <- start_list_droplets(request) do
      await_list(call, (request.deadline_ms || @default_deadline) + @reply_grace)
    end
  end

  @doc false
  # Waits at most `wait` ms for a started listing's answer; `{:error,
  # :timeout}` (and the call cancelled) when none came.
  @spec await_list(Call.t(), non_neg_integer()) ::
          {:ok, Listing.t()} | {:error, LibclusterDroplet.Error.reason()}
  def await_list(%Call{ref: ref} = call, wait) do
    result =
      receive do
        {:droplet_nif_list, ^ref, result, info} -> Listing.from_nif(result, info)
      after
        wait -> {:error, :timeout}
      end

    # Referenced after the answer, so the handle cannot be garbage
    # collected (which cancels the call) while this process waits.
    cancel(call)
    result
  end

  @doc """
  Starts a listing from a ready NIF request map (see `list_request/1`) and
  returns `{:ok, call}` at once (see `LibclusterDroplet.Call`; its
  `:concurrency` is the page concurrency granted). The caller later receives
  `{:droplet_nif_list, call.ref, result, info}`; `Listing.from_nif/2` turns
  the last two into `{:ok, listing}` or `{:error, reason}`. The NIF always
  answers, within the request's deadline. `{:error, :busy}` when 64 calls
  are already in flight.
  """
  @spec start_list_droplets(map()) :: {:ok, Call.t()} | {:error, term()}
  def start_list_droplets(request) when is_map(request) do
    ref = make_ref()

    case Native.list_droplets(request, ref) do
      {:ok, handle, concurrency} ->
        {:ok, %Call{ref: ref, handle: handle, concurrency: concurrency}}

      {:error, _} = error ->
        error
    end
  end

  @doc """
  Cancels a call started by `start_list_droplets/1` or `start_probe/3`: no
  new probe or page starts, the ones in flight end by their own timeouts,
  and the answer still comes, as `{:error, :cancelled}` unless every item
  had already run. Cancelling a finished call does nothing. Dropping the
  call (or dying) has the same effect, once the handle is garbage collected.
  """
  @spec cancel(Call.t()) :: :ok
  def cancel(%Call{handle: handle}) do
    :ok = Native.cancel(handle)
  end

  @doc """
  Builds the NIF request map for `start_list_droplets/1` from the options of
  `list_droplets/1`, reading the token from its source now. Returns
  `{:error, {:token_unavailable, detail}}` when it cannot be read.
  """
  @spec list_request(keyword()) ::
          {:ok, map()} | {:error, {:invalid_request | :token_unavailable, String.t()}}
  def list_request(opts) do
    with {:ok, opts} <- validate(opts),
         {:ok, token} <- token(opts[:token]) do
      {:ok,
       %{
         api_url: opts[:api_url],
         token: token,
         tag_name: opts[:tag_name],
         name: opts[:name],
         gpus: opts[:gpus],
         per_page: opts[:per_page],
         ca_file: opts[:ca_file],
         connect_timeout_ms: opts[:connect_timeout],
         request_timeout_ms: opts[:request_timeout],
         deadline_ms: opts[:deadline],
         max_body_bytes: opts[:max_body_bytes],
         max_pages: opts[:max_pages],
         max_droplets: opts[:max_droplets],
         max_listing_bytes: opts[:max_listing_bytes],
         max_string_bytes: opts[:max_string_bytes],
         max_tags_per_droplet: opts[:max_tags_per_droplet],
         max_addresses_per_droplet: opts[:max_addresses_per_droplet],
         page_concurrency: opts[:page_concurrency],
         keep_alive_ms: opts[:keep_alive],
         select: opts[:network] && %{network: opts[:network], ipv6: opts[:ipv6] == true}
       }}
    end
  end

  defp validate(opts) do
    case Keyword.validate(opts, @list_keys) do
      {:ok, _} = ok ->
        ok

      {:error, unknown} ->
        # Keyword.validate!/2 would put the whole list, token included, in its message.
        {:error, {:invalid_request, "unknown options #{inspect(unknown)}"}}
    end
  end

  defp token(source) do
    with {:ok, token} <- token_source(source),
         {:ok, secret, _token} <- Token.fetch(token),
         do: {:ok, secret}
  end

  defp token_source(source) do
    case Token.new(source) do
      {:ok, _} = ok -> ok
      {:error, message} -> {:error, {:invalid_request, "token: " <> message}}
    end
  end

  @doc """
  TCP-connects to every address on `port` in parallel and returns, in input
  order, `{address, {:ok, connect_us}}` or `{address, {:error, reason}}`.

  Options: `:timeout` per connection in ms (default 500), `:concurrency`
  (default 512, also the most one call runs): at most that many connections
  are pending at once, fewer when the NIF's thread budget is short, so `n`
  unreachable addresses cost about `ceil(n / concurrency)` timeouts. At most
  10,000 addresses per call (`{:error, {:invalid_request, _}}` beyond); an
  address over 64 bytes is `{:error, :invalid_address}`.
  """
  @spec probe([address()], 1..65_535, keyword()) ::
          [{address(), probe_result()}] | {:error, term()}
  def probe(addresses, port, opts \\ []) do
    timeout = Keyword.get(opts, :timeout, 500)

    with {:ok, %Call{ref: ref} = call} <- start_probe(addresses, port, opts) do
      waves = Call.waves(call, length(addresses))

      result =
        receive do
          {:droplet_nif_probe, ^ref, results} -> results
        after
          # The NIF enforces the timeout itself; this only guards against a lost message.
          timeout * waves + 5_000 -> {:error, :timeout}
        end

      # Stops the probes of an answer given up on; and keeps the handle
      # referenced, so it cannot be garbage collected while this waits.
      cancel(call)
      result
    end
  end

  @doc """
  Starts the probes of `probe/3` and returns `{:ok, call}` at once (see
  `LibclusterDroplet.Call`; its `:concurrency` is the concurrency granted);
  the caller later receives `{:droplet_nif_probe, call.ref, results}`, or
  `{:droplet_nif_probe, call.ref, {:error, reason}}`. `{:error, :busy}` when
  64 calls are already in flight.
  """
  @spec start_probe([address()], 1..65_535, keyword()) :: {:ok, Call.t()} | {:error, term()}
  def start_probe(addresses, port, opts \\ []) do
    ref = make_ref()
    timeout = Keyword.get(opts, :timeout, 500)
    concurrency = Keyword.get(opts, :concurrency, 512)

    case Native.probe(addresses, port, timeout, concurrency, ref) do
      {:ok, handle, concurrency} ->
        {:ok, %Call{ref: ref, handle: handle, concurrency: concurrency}}

      {:error, _} = error ->
        error
    end
  end
end
