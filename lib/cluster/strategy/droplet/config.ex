defmodule Cluster.Strategy.Droplet.Config do
  @default_api_url "https://api.digitalocean.com"

  alias LibclusterDroplet.{Filters, NodeName, Redact, Token}

  defmodule Schema do
    @moduledoc false
    # The schema in a module of its own: the config's moduledoc is built
    # from it while the config compiles.

    alias LibclusterDroplet.Filters

    @default_api_url "https://api.digitalocean.com"
    @max_tags 64

    def max_tags, do: @max_tags

    @doc false
    def schema do
      [
        token: [
          required: true,
          type: {:custom, LibclusterDroplet.Token, :validate_option, []},
          type_doc: "a token source",
          doc:
            "DigitalOcean API token, with the `droplet:read` scope: `{:system, \"VAR\"}` (read " <>
              "at each poll), `{:file, path}` (re-read when it changes and after a 401), " <>
              "`{module, function, args}`, a zero-arity function, or the token as a string " <>
              "(which libcluster's supervisor then keeps in its child specs; see " <>
              "`LibclusterDroplet.Token`)."
        ],
        tag_name: [
          type: {:custom, Cluster.Strategy.Droplet.Config, :validate_tags, []},
          default: nil,
          type_doc: "`nil`, a tag or a list of tags",
          doc:
            "only droplets with this tag, or any of a list of at most #{@max_tags} tags (one " <>
              "listing per tag). Needs the `tag:read` scope. Not with `:name`."
        ],
        name: [
          type: {:custom, Cluster.Strategy.Droplet.Config, :validate_string, ["a droplet name"]},
          default: nil,
          type_doc: "`nil` or a droplet name",
          doc: "only droplets with this exact (case-insensitive) name. Not with `:tag_name`."
        ],
        gpus: [
          type: {:in, [false, true, :only]},
          default: false,
          type_doc: "`false`, `true` or `:only`",
          doc:
            "`false`: no GPU droplets (the API lists them only when asked); `true`: GPU " <>
              "droplets too (one more listing); `:only`: only GPU droplets."
        ]
      ] ++
        Filters.schema() ++
        [
          network: [
            type: {:in, [:private, :public]},
            default: :private,
            type_doc: "`:private` or `:public`",
            doc: "which of the droplet's addresses nodes are reached on."
          ],
          ipv6: [
            type: :boolean,
            default: false,
            type_doc: "a boolean",
            doc:
              "use the droplet's IPv6 address (with `network: :public` only: DigitalOcean " <>
                "has no private IPv6)."
          ],
          node_basename: [
            type: {:custom, Cluster.Strategy.Droplet.Config, :validate_basename, []},
            default: nil,
            type_doc: "`nil` or a node basename",
            doc:
              "node names are `basename@address`; `nil`: the droplet's name is the basename " <>
                "(1-200 ASCII letters, digits, `_` or `-`)."
          ],
          health_check: [
            type: {:custom, LibclusterDroplet.HealthCheck, :validate, []},
            default: nil,
            type_doc: "`nil` or `{kind, opts}`",
            doc:
              "`{:tcp, port: port, timeout: ms}` (timeout 500): connect only to nodes whose " <>
                "check passes; a managed node that fails #{LibclusterDroplet.Plan.probe_strikes()} " <>
                "in a row is no longer managed, never disconnected for it. See " <>
                "`LibclusterDroplet.HealthCheck`."
          ],
          polling_interval: [
            type: :pos_integer,
            default: 5_000,
            type_doc: "a positive integer (ms)",
            doc: "ms between polls."
          ],
          api_url: [
            type: {:custom, Cluster.Strategy.Droplet.Config, :validate_api_url, []},
            default: @default_api_url,
            type_doc: "an https URL",
            doc: "the API's base URL; plain `http://` only for loopback hosts."
          ],
          ca_file: [
            type: {:custom, Cluster.Strategy.Droplet.Config, :validate_ca_file, []},
            default: nil,
            type_doc: "`nil` or a file path",
            doc:
              "a PEM file of extra CAs to trust, besides Mozilla's (TLS verification cannot be " <>
                "turned off)."
          ],
          api_timeout: [
            type: :pos_integer,
            default: 10_000,
            type_doc: "a positive integer (ms)",
            doc: "ms allowed per HTTP request; a whole poll gets three times that."
          ],
          max_backoff: [
            type: :pos_integer,
            default: 60_000,
            type_doc: "a positive integer (ms)",
            doc: "ms: the cap of the exponential backoff after failed polls."
          ],
          max_requests_per_minute: [
            type: :pos_integer,
            default: 125,
            type_doc: "a positive integer",
            doc:
              "polls are spaced so this strategy sends at most this many API requests a " <>
                "minute (DigitalOcean allows 250 per token)."
          ],
          coordinate: [
            type: :boolean,
            default: true,
            type_doc: "a boolean",
            doc:
              "once connected, one node polls for the cluster and shares what it found (see " <>
                "`LibclusterDroplet.Coordination`); `false`: every node polls on its own."
          ],
          require_listed: [
            type: :boolean,
            default: true,
            type_doc: "a boolean",
            doc:
              "join only when this node's own name is among the selected droplets, and leave " <>
                "the cluster when it no longer is; `false` for a node that is deliberately not " <>
                "a droplet."
          ]
        ]
    end
  end

  @moduledoc """
  The options of `Cluster.Strategy.Droplet`, validated by one NimbleOptions
  schema. `new!/1` checks a topology's `config:` when the strategy starts
  and raises an `ArgumentError` naming the option and the shape it accepts.

  An error never shows the value given: a token pasted into the wrong
  option would be printed by the error, and by every report of the crash
  that follows. For the same reason an option whose value holds the token,
  or looks like a DigitalOcean token (`dop_v1_`, `doo_v1_` or `dor_v1_`
  and 64 hex digits), is refused, naming the option only: at start for a
  literal token, and when each poll reads the token for the other forms
  (the poll then fails with `{:token_in_option, option}`).

  The token is read when each poll starts (`LibclusterDroplet.Token`) and
  only ever held in closures, so neither `inspect/1`, crash reports nor
  `:sys.get_state/1` can print it.

  ## Options

  #{NimbleOptions.docs(__MODULE__.Schema.schema())}
  """

  @schema NimbleOptions.new!(Schema.schema())
  @type_docs Map.new(Schema.schema(), fn {key, spec} -> {key, spec[:type_doc]} end)
  @keys Keyword.keys(Schema.schema())
  # The options whose values are (or hold) text, which a token pasted in the
  # wrong place would be.
  @text_options [:tag_name, :name, :node_basename, :api_url, :ca_file | Filters.options()]
  # Options of list_droplets/1 that the strategy has too, with the same defaults.
  @listing_keys [
    :token,
    :tag_name,
    :name,
    :gpus,
    :network,
    :ipv6,
    :api_url,
    :ca_file,
    :api_timeout
  ]

  @derive {Inspect, except: [:token]}
  defstruct [:token | @keys -- [:token]]

  @type health_check :: LibclusterDroplet.HealthCheck.t()

  @type t :: %__MODULE__{
          token: Token.t(),
          tag_name: String.t() | [String.t(), ...] | nil,
          name: String.t() | nil,
          gpus: boolean() | :only,
          autoscale_pool: String.t() | nil,
          pool_health: [String.t(), ...] | nil,
          regions: [String.t(), ...] | nil,
          vpc: :self | String.t() | nil,
          network: :private | :public,
          ipv6: boolean(),
          node_basename: String.t() | nil,
          health_check: health_check() | nil,
          polling_interval: pos_integer(),
          api_url: String.t(),
          ca_file: Path.t() | nil,
          api_timeout: pos_integer(),
          max_backoff: pos_integer(),
          max_requests_per_minute: pos_integer(),
          coordinate: boolean(),
          require_listed: boolean()
        }

  @doc "The option names `new!/1` accepts."
  @spec keys() :: [atom()]
  def keys, do: @keys

  @doc false
  # The part of the schema list_droplets/1 shares.
  def listing_schema, do: Keyword.take(Schema.schema(), @listing_keys)

  @doc """
  Validates a topology's `config:` keyword list and returns the config, or
  raises `ArgumentError` naming the first bad option and the shape it
  accepts, never its value.
  """
  @spec new!(keyword()) :: t()
  def new!(opts) do
    case new(opts) do
      {:ok, config} -> config
      {:error, message} -> raise ArgumentError, "Cluster.Strategy.Droplet: " <> message
    end
  end

  @doc false
  @spec new(term()) :: {:ok, t()} | {:error, String.t()}
  def new(opts) do
    with :ok <- keyword(opts),
         {:ok, valid} <- validate(opts, @schema, @type_docs),
         config = struct!(__MODULE__, valid),
         :ok <- combinations(config),
         :ok <- no_token_shapes(config),
         :ok <- literal_token_free(config) do
      {:ok, config}
    end
  end

  @doc false
  # Validates `opts` against a NimbleOptions schema with messages that never
  # show a value: custom validators word their own, the others are worded
  # here from `type_docs`.
  @spec validate(keyword(), NimbleOptions.t(), %{atom() => String.t()}) ::
          {:ok, keyword()} | {:error, String.t()}
  def validate(opts, schema, type_docs) do
    case NimbleOptions.validate(opts, schema) do
      {:ok, valid} ->
        {:ok, valid}

      {:error, %NimbleOptions.ValidationError{key: keys}} when is_list(keys) ->
        {:error,
         "unknown option(s) #{inspect(keys)}; the known options are: #{inspect(Map.keys(type_docs))}"}

      {:error, %NimbleOptions.ValidationError{value: nil, message: message}} ->
        {:error, message}

      {:error, %NimbleOptions.ValidationError{key: key, message: message}} ->
        case schema.schema[key][:type] do
          {:custom, _, _, _} ->
            {:error, message}

          _ ->
            {:error,
             "invalid value for #{inspect(key)} option: expected #{type_docs[key]} (value not shown)"}
        end
    end
  end

  # Not printed: it may hold the token.
  defp keyword(opts) do
    cond do
      not (is_list(opts) and Keyword.keyword?(opts)) ->
        {:error, "expected the topology's config: to be a keyword list (value not shown)"}

      (repeated = Keyword.keys(opts) -- Enum.uniq(Keyword.keys(opts))) != [] ->
        {:error, "option(s) #{inspect(Enum.uniq(repeated))} given more than once"}

      true ->
        :ok
    end
  end

  defp combinations(%__MODULE__{tag_name: tag, name: name}) when tag != nil and name != nil,
    do:
      {:error,
       "invalid options :tag_name and :name: the DigitalOcean API filters by one or the other, not both"}

  defp combinations(%__MODULE__{autoscale_pool: pool, tag_name: tag, name: name})
       when pool != nil and (tag != nil or name != nil),
       do:
         {:error,
          "invalid options :autoscale_pool with :tag_name or :name: a pool selects its own " <>
            "members (by its template's tag when it has one)"}

  defp combinations(%__MODULE__{autoscale_pool: nil, pool_health: [_ | _]}),
    do: {:error, "invalid option :pool_health: it needs :autoscale_pool"}

  defp combinations(%__MODULE__{network: :private, ipv6: true}),
    do:
      {:error,
       "invalid option :ipv6: true needs network: :public; DigitalOcean has no private IPv6 addresses"}

  defp combinations(_config), do: :ok

  defp no_token_shapes(config) do
    case Enum.find(
           @text_options,
           &(config |> Map.get(&1) |> texts() |> Enum.any?(fn t -> Redact.token_shaped?(t) end))
         ) do
      nil ->
        :ok

      option ->
        {:error,
         "invalid value for #{inspect(option)} option: it looks like a DigitalOcean token (value not shown)"}
    end
  end

  defp literal_token_free(%__MODULE__{token: token} = config) do
    case Token.literal(token) do
      {:ok, secret} ->
        case check_secret(config, secret) do
          :ok -> :ok
          {:error, {:token_in_option, option}} -> {:error, token_in(option)}
        end

      :error ->
        :ok
    end
  end

  defp token_in(option),
    do:
      "invalid value for #{inspect(option)} option: it holds (part of) the token (value not shown)"

  @doc """
  Checks that no option's value holds `secret` (the token just read), or
  any #{Redact.window()}-character piece of it. `{:error, {:token_in_option,
  option}}` names the first that does, never the value.
  """
  @spec check_secret(t() | map(), String.t()) :: :ok | {:error, {:token_in_option, atom()}}
  def check_secret(config, secret) do
    pieces = Redact.pieces(secret)

    case Enum.find(@text_options, fn option ->
           config |> Map.get(option) |> texts() |> Enum.any?(&Redact.holds?(&1, pieces))
         end) do
      nil -> :ok
      option -> {:error, {:token_in_option, option}}
    end
  end

  @doc """
  The config with `option`'s value replaced by `:withheld`: an option found
  holding the token is no longer kept, where inspect, `:sys` or a crash
  report could show it; `withheld/1` names it so every poll fails on it.
  """
  @spec withhold(t(), atom()) :: t()
  def withhold(config, option), do: Map.put(config, option, :withheld)

  @doc false
  @spec withheld(t()) :: :ok | {:error, {:token_in_option, atom()}}
  def withheld(config) do
    case Enum.find(@text_options, &(Map.get(config, &1) == :withheld)) do
      nil -> :ok
      option -> {:error, {:token_in_option, option}}
    end
  end

  defp texts(nil), do: []
  defp texts(text) when is_binary(text), do: [text]
  defp texts(list) when is_list(list), do: Enum.filter(list, &is_binary/1)
  defp texts(_other), do: []

  @doc """
  The options of `LibclusterDroplet.list_droplets/1` this config asks for,
  but the token, the deadline and the keep-alive: what to list and how to
  reach the API, shared by the strategy and `mix libcluster_droplet.explain`.
  """
  @spec list_options(t()) :: keyword()
  def list_options(%__MODULE__{} = config),
    do: config |> Map.take(@listing_keys -- [:token]) |> Keyword.new()

  @doc """
  A hash of the options that decide which nodes are selected: API URL,
  tags, name, network, IP version, basename and the filters set (one
  sorted list, `LibclusterDroplet.Filters.set/1`, with `:gpus` when it is
  not `false`). Strategies follow each other's shares, and adopt stored
  membership, only under the same one. The order of tags does not matter,
  nor does one tag given as a list. A config that sets no filter hashes as
  in 2.0.0, so nodes of that release and this one follow each other's
  shares during an upgrade.
  """
  @spec fingerprint(t()) :: non_neg_integer()
  def fingerprint(%__MODULE__{} = config) do
    base =
      {config.api_url, fingerprint_tags(config.tag_name), config.name, config.network,
       config.ipv6, config.node_basename}

    filters = if config.gpus, do: [gpus: config.gpus], else: []

    case filters ++ Filters.set(config) do
      [] -> :erlang.phash2(base)
      filters -> :erlang.phash2({base, Enum.sort(filters)})
    end
  end

  defp fingerprint_tags([tag]), do: tag
  defp fingerprint_tags(tags) when is_list(tags), do: Enum.sort(tags)
  defp fingerprint_tags(tag), do: tag

  ## Custom validators: each message names the shape, never the value.

  @doc false
  def validate_tags(nil), do: {:ok, nil}
  def validate_tags(tag) when is_binary(tag) and tag != "", do: {:ok, tag}

  def validate_tags([_ | _] = tags) do
    case Filters.strings(tags, Schema.max_tags(), &(is_binary(&1) and &1 != "")) do
      {:ok, tags} -> {:ok, tags}
      :error -> tags_error()
    end
  end

  def validate_tags(_other), do: tags_error()

  defp tags_error,
    do:
      {:error,
       "expected a non-empty string, a list of at most #{Schema.max_tags()} of them, or nil (value not shown)"}

  @doc false
  def validate_string(nil, _what), do: {:ok, nil}
  def validate_string(text, _what) when is_binary(text) and text != "", do: {:ok, text}

  def validate_string(_other, what),
    do: {:error, "expected nil or #{what}, a non-empty string (value not shown)"}

  @doc false
  def validate_basename(nil), do: {:ok, nil}

  def validate_basename(basename) do
    if NodeName.valid_basename?(basename),
      do: {:ok, basename},
      else:
        {:error,
         "expected the name part of a node name: 1-200 ASCII letters, digits, '_' or '-' (value not shown)"}
  end

  @doc false
  def validate_api_url(url) when is_binary(url) do
    uri = URI.parse(url)

    cond do
      uri.scheme not in ["http", "https"] or uri.host in [nil, ""] ->
        {:error, "expected an http(s) URL such as #{inspect(@default_api_url)} (value not shown)"}

      uri.userinfo != nil or uri.query != nil or uri.fragment != nil ->
        {:error, "expected a URL with no credentials, query or fragment (value not shown)"}

      uri.scheme == "http" and not loopback?(uri.host) ->
        {:error,
         "plain http would send the token unencrypted; http:// is only accepted for loopback " <>
           "hosts (value not shown)"}

      true ->
        {:ok, String.trim_trailing(url, "/")}
    end
  end

  def validate_api_url(_other), do: {:error, "expected a URL string (value not shown)"}

  defp loopback?(host) do
    host = host |> String.trim_leading("[") |> String.trim_trailing("]")

    case :inet.parse_address(String.to_charlist(host)) do
      {:ok, {127, _, _, _}} -> true
      {:ok, {0, 0, 0, 0, 0, 0, 0, 1}} -> true
      _ -> host == "localhost"
    end
  end

  @doc false
  def validate_ca_file(nil), do: {:ok, nil}

  def validate_ca_file(path) when is_binary(path) do
    if File.regular?(path),
      do: {:ok, path},
      else:
        {:error,
         "expected a readable PEM file; the path given is not a regular file (path not shown)"}
  end

  def validate_ca_file(_other), do: {:error, "expected a file path or nil (value not shown)"}
end
