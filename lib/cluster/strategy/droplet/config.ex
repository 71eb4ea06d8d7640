defmodule Cluster.Strategy.Droplet.Config do
  alias LibclusterDroplet.{Filters, NodeName, Redact, Token}

  @default_api_url "https://api.digitalocean.com"
  @max_tags 64

  # The one schema of the strategy's options: validation, defaults and the
  # moduledoc's table. `type_doc` words the errors, which show no value.
  @selection_options [
    token: [
      required: true,
      type: {:custom, Token, :validate_option, []},
      type_doc: "a token source",
      doc:
        "DigitalOcean API token with the `droplet:read` scope: `{:system, \"VAR\"}` " <>
          "(read at each poll), `{:file, path}` (re-read when it changes and after a " <>
          "401), `{module, function, args}`, a zero-arity function, or the token itself " <>
          "(which libcluster's supervisor then keeps in its child specs)."
    ],
    tag_name: [
      type: {:custom, __MODULE__, :validate_tags, []},
      default: nil,
      type_doc: "`nil`, a tag or a list of tags",
      doc:
        "only droplets with this tag, or any of at most #{@max_tags} tags (one listing " <>
          "per tag). Needs the `tag:read` scope. Not with `:name`."
    ],
    name: [
      type: {:custom, __MODULE__, :validate_string, ["a droplet name"]},
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
  ]

  @other_options [
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
        "use the droplet's IPv6 address; only with `network: :public` (DigitalOcean " <>
          "has no private IPv6)."
    ],
    node_basename: [
      type: {:custom, __MODULE__, :validate_basename, []},
      default: nil,
      type_doc: "`nil` or a node basename",
      doc:
        "node names are `basename@address`; `nil`: the droplet's name (1-200 ASCII " <>
          "letters, digits, `_` or `-`)."
    ],
    health_check: [
      type: {:custom, LibclusterDroplet.HealthCheck, :validate, []},
      default: nil,
      type_doc: "`nil` or `{kind, opts}`",
      doc:
        "`{:tcp, port: port, timeout: ms}` (timeout 500): connect only to nodes " <>
          "whose check passes; a managed node failing " <>
          "#{LibclusterDroplet.Plan.probe_strikes()} in a row is no longer managed, " <>
          "never disconnected for it."
    ],
    polling_interval: [
      type: :pos_integer,
      default: 5_000,
      type_doc: "a positive integer (ms)",
      doc: "ms between polls."
    ],
    api_url: [
      type: {:custom, __MODULE__, :validate_api_url, []},
      default: @default_api_url,
      type_doc: "an https URL",
      doc: "the API's base URL; plain `http://` only for loopback hosts."
    ],
    ca_file: [
      type: {:custom, __MODULE__, :validate_ca_file, []},
      default: nil,
      type_doc: "`nil` or a file path",
      doc: "a PEM file of CAs to trust besides Mozilla's (verification stays on)."
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
      doc: "ms: the cap of the backoff after failed polls."
    ],
    max_requests_per_minute: [
      type: :pos_integer,
      default: 125,
      type_doc: "a positive integer",
      doc:
        "polls are spaced to send at most this many API requests a minute " <>
          "(DigitalOcean allows 250 per token)."
    ],
    coordinate: [
      type: :boolean,
      default: true,
      type_doc: "a boolean",
      doc:
        "once connected, one node polls for the cluster and shares what it finds " <>
          "([one poller per cluster](how-it-works.md#one-poller-per-cluster)); " <>
          "`false`: every node polls on its own."
    ],
    require_listed: [
      type: :boolean,
      default: true,
      type_doc: "a boolean",
      doc:
        "join only while this node's own name is among the selected droplets; " <>
          "`false` for a node that is deliberately not a droplet."
    ]
  ]

  @options @selection_options ++ Filters.schema() ++ @other_options

  @moduledoc """
  The options of `Cluster.Strategy.Droplet`, one NimbleOptions schema.
  `new!/1` checks a topology's `config:` when the strategy starts and
  raises an `ArgumentError` naming the option and the shape it accepts,
  never the value: a token pasted into the wrong option would be printed.
  For the same reason an option whose value holds the token, or looks like
  a DigitalOcean token, is refused: at start for a literal token, at each
  poll for the other forms (`{:token_in_option, option}`). The
  [configuration guide](configuration.md) tells what each option costs.

  ## Options

  #{NimbleOptions.docs(@options)}
  """

  @schema NimbleOptions.new!(@options)
  @keys Keyword.keys(@options)
  # The options whose values are (or hold) text, which a token pasted in the
  # wrong place would be.
  @text_options [:tag_name, :name, :node_basename, :api_url, :ca_file | Filters.options()]
  # Options of list_droplets/1 that the strategy has too, with the same defaults.
  @listing_keys ~w(token tag_name name gpus autoscale_pool network ipv6 api_url ca_file api_timeout)a

  @derive {Inspect, except: [:token]}
  defstruct [:token | @keys -- [:token]]

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
          health_check: LibclusterDroplet.HealthCheck.t() | nil,
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
  def listing_schema, do: Keyword.take(@options, @listing_keys)

  @doc "Validates a topology's `config:`, or raises `ArgumentError`."
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
         {:ok, valid} <- validate(opts, @schema),
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
  # here from the option's `type_doc`.
  def validate(opts, %NimbleOptions{schema: specs} = schema) do
    case NimbleOptions.validate(opts, schema) do
      {:ok, valid} ->
        {:ok, valid}

      {:error, %NimbleOptions.ValidationError{key: keys}} when is_list(keys) ->
        {:error,
         "unknown option(s) #{inspect(keys)}; the known options are: #{inspect(Enum.sort(Keyword.keys(specs)))}"}

      {:error, %NimbleOptions.ValidationError{value: nil, message: message}} ->
        {:error, message}

      {:error, %NimbleOptions.ValidationError{key: key, message: message}} ->
        case specs[key][:type] do
          {:custom, _, _, _} ->
            {:error, message}

          _ ->
            {:error,
             "invalid value for #{inspect(key)} option: expected #{specs[key][:type_doc]} (value not shown)"}
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
    case text_option(config, &Redact.token_shaped?/1) do
      nil ->
        :ok

      option ->
        {:error,
         "invalid value for #{inspect(option)} option: it looks like a DigitalOcean token (value not shown)"}
    end
  end

  defp literal_token_free(%__MODULE__{token: token} = config) do
    with {:ok, secret} <- Token.literal(token),
         {:error, {:token_in_option, option}} <- check_secret(config, secret) do
      {:error,
       "invalid value for #{inspect(option)} option: it holds (part of) the token (value not shown)"}
    else
      _ -> :ok
    end
  end

  @doc """
  Checks that no option's value holds `secret` (the token just read) or
  any #{Redact.window()}-character piece of it; names the first that does.
  """
  @spec check_secret(t() | map(), String.t()) :: :ok | {:error, {:token_in_option, atom()}}
  def check_secret(config, secret) do
    pieces = Redact.pieces(secret)

    case text_option(config, &Redact.holds?(&1, pieces)) do
      nil -> :ok
      option -> {:error, {:token_in_option, option}}
    end
  end

  # The first text option with a text for which `found?` holds.
  defp text_option(config, found?) do
    Enum.find(@text_options, fn option ->
      case Map.get(config, option) do
        text when is_binary(text) -> found?.(text)
        list when is_list(list) -> list |> Enum.filter(&is_binary/1) |> Enum.any?(found?)
        _ -> false
      end
    end)
  end

  @doc false
  # An option found holding the token is replaced by :withheld, where
  # inspect, :sys or a crash report could show it; withheld/1 names it, so
  # every poll fails on it.
  def withhold(config, option), do: Map.put(config, option, :withheld)

  @doc false
  def withheld(config) do
    case Enum.find(@text_options, &(Map.get(config, &1) == :withheld)) do
      nil -> :ok
      option -> {:error, {:token_in_option, option}}
    end
  end

  @doc """
  The options of `LibclusterDroplet.list_droplets/1` this config asks for,
  but the token, the deadline and the keep-alive.
  """
  @spec list_options(t()) :: keyword()
  def list_options(%__MODULE__{} = config),
    do: config |> Map.take(@listing_keys -- [:token]) |> Keyword.new()

  @doc """
  A hash of the options that decide which nodes are selected: API URL,
  tags (in any order), name, network, IP version, basename and the filters
  set. Strategies follow each other's shares, and adopt stored membership,
  only under the same one. A config that sets no filter hashes as in
  2.0.0, so both releases follow each other's shares during an upgrade.
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

  def validate_tags(tags) do
    with :error <- Filters.strings(tags, @max_tags, &(is_binary(&1) and &1 != "")),
         do:
           {:error,
            "expected a non-empty string, a list of at most #{@max_tags} of them, or nil (value not shown)"}
  end

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
