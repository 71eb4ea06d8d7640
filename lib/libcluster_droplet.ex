defmodule LibclusterDroplet do
  @moduledoc """
  The DigitalOcean side of `Cluster.Strategy.Droplet`, usable on its own:
  list droplets through the API and check addresses, both done by the
  Rust NIF off the Erlang schedulers.

      iex> LibclusterDroplet.list_droplets(token: {:system, "DIGITALOCEAN_TOKEN"}, tag_name: "web")
      {:ok, %LibclusterDroplet.Listing{droplets: [%{name: "web-1", address: "10.0.0.2", ...}], ...}}

      iex> LibclusterDroplet.probe(["10.0.0.2", "10.0.0.3"], 4000, timeout: 500)
      [{"10.0.0.2", {:ok, 312}}, {"10.0.0.3", {:error, :timeout}}]

  Every function returns `{:error, reason}` on failure (`LibclusterDroplet.Error`
  lists the reasons and words them).

  Each call runs on a thread of the NIF's own and answers the calling process
  with a message, so a slow API never occupies an Erlang scheduler; the
  `start_*` functions expose that for callers that must stay responsive.
  All calls share one thread budget per VM: at most 64 calls in flight
  (another is refused at once with `{:error, :busy}`) and 1,024 helper
  threads among them. Listings respect the rate-limit floor of their API
  URL (see `start_list_droplets/1`).
  """

  alias Cluster.Strategy.Droplet.Config
  alias LibclusterDroplet.{Call, Floor, Listing, Native, Token}

  @typedoc "An IPv4 or IPv6 address literal, e.g. `\"10.0.0.2\"` or `\"2604:a880::1\"`."
  @type address :: String.t()

  @typedoc """
  A droplet as the NIF returns it: only the fields clustering needs.
  `address` is the one selected for the requested network and IP version
  (`nil` for droplets that are not `:active` or have no such address).
  `fields` holds the droplet fields a filter asked the NIF to pass through,
  by path (`%{"size_slug" => "s-1vcpu-1gb"}`).
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
          address: address() | nil,
          fields: %{String.t() => String.t() | number() | boolean() | [String.t()] | nil}
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

  # Beyond the listing's own deadline, which the NIF enforces: only a lost
  # reply could run into it.
  @reply_grace 5_000

  # The options the NIF request carries under their own names.
  @passed_as_is ~w(api_url tag_name name gpus per_page ca_file max_body_bytes max_pages
                   max_droplets max_listing_bytes max_string_bytes max_tags_per_droplet
                   max_addresses_per_droplet page_concurrency)a

  @int "a positive integer"

  @listing_only [
    per_page: [
      type: {:in, 1..200},
      default: 200,
      type_doc: "an integer in 1..200",
      doc: "droplets per page."
    ],
    connect_timeout: [
      type: :pos_integer,
      default: 5_000,
      type_doc: "#{@int} (ms)",
      doc: "per connection."
    ],
    deadline: [
      type: {:or, [:pos_integer, nil]},
      default: nil,
      type_doc: "#{@int} (ms), or nil for three times :api_timeout",
      doc: "the whole listing, reading `:ca_file` included; `nil`: three times `:api_timeout`."
    ],
    max_body_bytes: [
      type: :pos_integer,
      default: 4 * 1024 * 1024,
      type_doc: @int,
      doc: "one response; 4 MiB is eight times a full page of 200 droplets."
    ],
    max_listing_bytes: [
      type: :pos_integer,
      default: 32 * 1024 * 1024,
      type_doc: @int,
      doc:
        "what the listing keeps, checked while each page is parsed, so its memory follows " <>
          "the bound, not what the server sends: past this or the next three it fails with " <>
          "`{:listing_too_large, {bound, limit}}`."
    ],
    max_string_bytes: [type: :pos_integer, default: 1_024, type_doc: @int, doc: "one string."],
    max_tags_per_droplet: [type: :pos_integer, default: 1_000, type_doc: @int, doc: "tags."],
    max_addresses_per_droplet: [
      type: :pos_integer,
      default: 64,
      type_doc: @int,
      doc: "v4 and v6 addresses together."
    ],
    max_pages: [type: :pos_integer, default: 1_000, type_doc: @int, doc: "pages."],
    max_droplets: [
      type: :pos_integer,
      default: 10_000,
      type_doc: @int,
      doc: "`{:too_many_droplets, max}` past it, as soon as page 1's `meta.total` says so."
    ],
    page_concurrency: [
      type: {:in, 1..64},
      default: 4,
      type_doc: "an integer in 1..64",
      doc: "pages fetched at once after the first, fewer when the NIF's threads are short."
    ],
    keep_alive: [
      type: {:in, 0..86_400_000},
      default: 3_600_000,
      type_doc: "an integer of ms in 0..86400000",
      doc: "how long an idle connection to the API is kept for the next listing; 0: none."
    ]
  ]

  @list_schema NimbleOptions.new!(Config.listing_schema() ++ @listing_only)
  @doc """
  Lists droplets, following every page, and returns `{:ok, listing}` or
  `{:error, reason}`. All or nothing: if one page fails, the listing fails.

  Options shared with the strategy, with the same defaults (see
  `Cluster.Strategy.Droplet.Config`): `:token` (required), `:api_url`,
  `:tag_name`, `:name`, `:gpus`, `:autoscale_pool`, `:network`, `:ipv6`,
  `:ca_file` and `:api_timeout`. Each droplet's `:address` is the one
  `:network` and `:ipv6` select. Besides:

  #{NimbleOptions.docs(@listing_only)}
  Several listings (tags, GPU droplets) are made one after the other
  within the one `:deadline`, all or nothing; `requests` counts them all
  and `total` is the sum of their `meta.total`. A page listing more
  droplets than `:per_page` fails the listing (`{:inconsistent, _}`), as
  does a `meta.total` that changes while the pages are fetched, twice in a
  row: after the first change the listing starts over.

  A bad option is `{:error, {:invalid_request, message}}`, the message
  naming the option and never its value.
  """
  @spec list_droplets(keyword()) ::
          {:ok, Listing.t()} | {:error, LibclusterDroplet.Error.reason()}
  def list_droplets(opts) do
    with {:ok, request} <- list_request(opts),
         {:ok, call} <- start_list_droplets(request) do
      await_list(call, request.api_url, request.deadline_ms + @reply_grace)
    end
  end

  @doc false
  # Waits at most `wait` ms for a started listing's answer.
  @spec await_list(Call.t(), String.t(), non_neg_integer()) ::
          {:ok, Listing.t()} | {:error, LibclusterDroplet.Error.reason()}
  def await_list(call, api_url, wait) do
    with {:listed, result, info} <- await(call, wait), do: listed(api_url, result, info)
  end

  @doc false
  # Waits at most `wait` ms for a started check's results.
  @spec await_check(Call.t(), non_neg_integer()) ::
          [{address(), probe_result()}] | {:error, term()}
  def await_check(call, wait), do: await(call, wait)

  # The answer to `call`, or `{:error, :timeout}` after `wait` ms: the NIF
  # enforces its deadlines itself, so only a lost message runs into it. The
  # call is cancelled afterwards, which stops one given up on and keeps the
  # handle referenced (collecting it cancels the call) while this waits.
  defp await(%Call{ref: ref} = call, wait) do
    answer =
      receive do
        {:droplet_nif_list, ^ref, result, info} -> {:listed, result, info}
        {:droplet_nif_probe, ^ref, results} -> results
      after
        wait -> {:error, :timeout}
      end

    cancel(call)
    answer
  end

  @doc false
  # A listing's answer as `{:ok, listing}` or `{:error, reason}`, the floor
  # it sets for `api_url` raised: what every caller does with the message
  # `{:droplet_nif_list, ref, result, info}`.
  @spec listed(String.t(), term(), map()) :: {:ok, Listing.t()} | {:error, term()}
  def listed(api_url, result, info) do
    reason = with {:error, reason} <- result, do: reason, else: (_ -> nil)
    now = System.system_time(:millisecond)
    Floor.raise(api_url, Floor.after_response(Map.get(info, :rate_limit), reason, now))
    Listing.from_nif(result, info)
  end

  @doc """
  Starts a listing from a ready NIF request map (see `list_request/1`) and
  returns `{:ok, call}` at once (see `LibclusterDroplet.Call`; its
  `:concurrency` is the page concurrency granted). The caller later receives
  `{:droplet_nif_list, call.ref, result, info}`, which `listed/3` reads.
  The NIF always answers, within the request's deadline. `{:error, :busy}`
  when 64 calls are already in flight; `{:error, {:rate_limited, seconds}}`,
  with nothing sent, while the floor of its API URL holds.
  """
  @spec start_list_droplets(map()) :: {:ok, Call.t()} | {:error, term()}
  def start_list_droplets(%{api_url: api_url} = request) do
    case Floor.wait(api_url) do
      0 -> started(&Native.list_droplets(request, &1))
      wait -> {:error, {:rate_limited, div(wait + 999, 1000)}}
    end
  end

  # A NIF call started with a new ref, as a `Call`.
  defp started(start) do
    ref = make_ref()

    with {:ok, handle, concurrency} <- start.(ref),
         do: {:ok, %Call{ref: ref, handle: handle, concurrency: concurrency}}
  end

  @doc """
  Cancels a call started by `start_list_droplets/1` or `start_probe/3`: no
  new probe or page starts, the ones in flight end by their own timeouts,
  and the answer still comes, as `{:error, :cancelled}` unless every item
  had already run. Cancelling a finished call does nothing. Dropping the
  call (or dying) has the same effect, once the handle is garbage collected.
  """
  @spec cancel(Call.t()) :: :ok
  def cancel(%Call{handle: handle}), do: :ok = Native.cancel(handle)

  @doc """
  Builds the NIF request map for `start_list_droplets/1` from the options of
  `list_droplets/1`, reading the token from its source now. Returns
  `{:error, {:token_unavailable, detail}}` when it cannot be read,
  `{:error, {:token_in_option, option}}` when an option holds it (or a
  piece of it: nothing is sent), and `{:error, {:invalid_request, message}}`
  for a bad option.
  """
  @spec list_request(keyword(), Listing.pool() | nil) ::
          {:ok, map()}
          | {:error, {:invalid_request | :token_unavailable | :token_in_option, term()}}
  def list_request(opts, pool \\ nil) do
    with {:ok, opts} <- validate(opts),
         {:ok, token, _source} <- Token.fetch(opts[:token]),
         :ok <- Config.check_secret(Map.new(opts), token) do
      request = %{
        token: token,
        connect_timeout_ms: opts[:connect_timeout],
        request_timeout_ms: opts[:api_timeout],
        deadline_ms: opts[:deadline] || 3 * opts[:api_timeout],
        keep_alive_ms: opts[:keep_alive],
        select: %{network: opts[:network], ipv6: opts[:ipv6]},
        autoscale_pool: pool_request(opts[:autoscale_pool], pool),
        fields: LibclusterDroplet.Filters.fields()
      }

      {:ok, opts |> Keyword.take(@passed_as_is) |> Map.new() |> Map.merge(request)}
    end
  end

  @uuid ~r/\A[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\z/i

  # The pool to list: by its UUID or its name, or as resolved before
  # (`pool`: its id, name and template tags), which spares the lookup.
  defp pool_request(nil, _pool), do: nil

  defp pool_request(_option, %{id: id, name: name, tags: tags}),
    do: %{id: id, name: name, tags: tags}

  defp pool_request(option, nil) do
    if Regex.match?(@uuid, option),
      do: %{id: String.downcase(option), name: nil, tags: nil},
      else: %{id: nil, name: option, tags: nil}
  end

  defp validate(opts) do
    if is_list(opts) and Keyword.keyword?(opts) do
      case Config.validate(opts, @list_schema) do
        {:ok, opts} -> {:ok, opts}
        {:error, message} -> {:error, {:invalid_request, message}}
      end
    else
      # Not printed: it may hold the token.
      {:error, {:invalid_request, "expected a keyword list of options (value not shown)"}}
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

    with {:ok, call} <- start_probe(addresses, port, opts),
         do: await_check(call, timeout * Call.waves(call, length(addresses)) + @reply_grace)
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
    check = %{kind: :tcp, port: port, timeout_ms: Keyword.get(opts, :timeout, 500)}
    start_check(addresses, check, Keyword.get(opts, :concurrency, 512))
  end

  @doc false
  # Starts a health check of every address: `check` is a kind's map
  # (`LibclusterDroplet.HealthCheck.c:native/1`), which the NIF passes to its
  # Rust probe whole. Answers like start_probe/3.
  @spec start_check([address()], map(), pos_integer()) :: {:ok, Call.t()} | {:error, term()}
  def start_check(addresses, check, concurrency) when is_map(check),
    do: started(&Native.probe(addresses, check, concurrency, &1))
end
