defmodule Cluster.Strategy.Droplet.Config do
  @moduledoc """
  Validated options of `Cluster.Strategy.Droplet`.

  `new!/1` checks a topology's `config:` keyword list when the strategy starts
  and raises an `ArgumentError` that names the option and what it accepts.
  The options, their defaults and meaning:

  | option | default | token scope | |
  | --- | --- | --- | --- |
  | `:token` | required | `droplet:read`, always | DigitalOcean API token: `{:system, "VAR"}` (read at each poll), `{:file, path}` (re-read when it changes and after a 401), `{module, function, args}`, a zero-arity function, or the token as a string (see `LibclusterDroplet.Token`) |
  | `:network` | `:private` | | `:private` or `:public`: which of the droplet's addresses nodes are reached on |
  | `:ipv6` | `false` | | use the droplet's IPv6 address (public only: DigitalOcean has no private IPv6) |
  | `:tag_name` | `nil` | `tag:read` | only droplets with this tag, or with any of a list of tags (one listing per tag) |
  | `:name` | `nil` | | only droplets with this exact (case-insensitive) name; not with `:tag_name` |
  | `:gpus` | `false` | | `false`: no GPU droplets (the API lists them only when asked); `true`: GPU droplets too (one more listing); `:only`: only GPU droplets |
  | `:vpc` | `nil` | `vpc:read` | `nil`: any VPC; a VPC's UUID: only droplets in it; `:self`: only droplets in this node's own VPC (found through this node's droplet in the listing) |
  | `:regions` | `nil` | | `nil`: any region; a list of region slugs (`["nyc3", "sfo3"]`): only droplets in one of them |
  | `:node_basename` | the droplet's name | | node names are `basename@address` |
  | `:health_check` | `nil` | | `{:tcp, port: port, timeout: ms}` (timeout 500): connect only to nodes whose port answers; a managed node that fails 3 probes in a row is no longer managed (never disconnected for it) |
  | `:polling_interval` | `5_000` | | ms between polls |
  | `:api_url` | `"https://api.digitalocean.com"` | | plain `http://` only for loopback hosts |
  | `:ca_file` | `nil` | | PEM file of extra CAs to trust (TLS verification cannot be disabled) |
  | `:api_timeout` | `10_000` | | ms allowed per HTTP request; a whole poll gets three times that, all its listings included |
  | `:max_backoff` | `60_000` | | ms: cap of the exponential backoff after failed polls |
  | `:coordinate` | `true` | | once connected, let one node poll for the cluster and share its results (see `LibclusterDroplet.Coordination`); `false`: every node polls on its own |
  | `:require_listed` | `true` | | join only when this node's own name (`basename@address`) is among the selected droplets, and leave the cluster when it no longer is; `false` for a node that is deliberately not a droplet |
  | `:max_requests_per_minute` | `125` | | polls are spaced so this strategy sends at most this many API requests a minute (DigitalOcean allows 250 per token) |

  `:tag_name`, `:name` and `:gpus` are sent to the API; `:regions` and
  `:vpc` are applied here, to the listed droplets, as is `:tag_name` on
  the GPU listing (the API takes no tag together with `type=gpus`). See
  `LibclusterDroplet.Plan.filter/3`.

  The token is read when each poll starts (`LibclusterDroplet.Token`) and
  only ever held in closures, so neither `inspect/1`, crash reports nor
  `:sys.get_state/1` can print it. A literal string token also sits in
  the topology's config, which libcluster's supervisor keeps in its child
  specs; the `{:system, _}` and `{:file, _}` forms keep it out of there.
  """

  @default_api_url "https://api.digitalocean.com"
  @default_probe_timeout 500

  @derive {Inspect, except: [:token]}
  @enforce_keys [:token]
  defstruct token: nil,
            network: :private,
            ipv6: false,
            tag_name: nil,
            name: nil,
            gpus: false,
            vpc: nil,
            regions: nil,
            node_basename: nil,
            health_check: nil,
            polling_interval: 5_000,
            api_url: @default_api_url,
            ca_file: nil,
            api_timeout: 10_000,
            max_backoff: 60_000,
            max_requests_per_minute: 125,
            coordinate: true,
            require_listed: true

  @type health_check :: {:tcp, port: 1..65_535, timeout: pos_integer()}

  @type t :: %__MODULE__{
          token: LibclusterDroplet.Token.t(),
          network: :private | :public,
          ipv6: boolean(),
          tag_name: String.t() | [String.t(), ...] | nil,
          name: String.t() | nil,
          gpus: boolean() | :only,
          vpc: :self | String.t() | nil,
          regions: [String.t(), ...] | nil,
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

  @keys [
    :token,
    :network,
    :ipv6,
    :tag_name,
    :name,
    :gpus,
    :vpc,
    :regions,
    :node_basename,
    :health_check,
    :polling_interval,
    :api_url,
    :ca_file,
    :api_timeout,
    :max_backoff,
    :max_requests_per_minute,
    :coordinate,
    :require_listed
  ]

  @doc "The option names `new!/1` accepts."
  @spec keys() :: [atom()]
  def keys, do: @keys

  @doc """
  Validates a topology's `config:` keyword list and returns the config, or
  raises `ArgumentError` naming the first bad option and what it accepts.
  """
  @spec new!(keyword()) :: t()
  def new!(opts) do
    unless Keyword.keyword?(opts) do
      # Not printed: it may hold the token.
      fail("expected the topology's config: to be a keyword list")
    end

    case Keyword.validate(opts, @keys) do
      {:ok, _} ->
        :ok

      {:error, unknown} ->
        # Keyword.validate!/2 would print the whole list, token included.
        fail("unknown option(s) #{inspect(unknown)}; the known options are: #{inspect(@keys)}")
    end

    defaults = %__MODULE__{token: nil}

    config = %__MODULE__{
      token: token!(Keyword.fetch(opts, :token)),
      network: one_of!(opts, :network, [:private, :public], defaults.network),
      ipv6: boolean!(opts, :ipv6, defaults.ipv6),
      tag_name: tag_name!(Keyword.get(opts, :tag_name)),
      name: optional_string!(opts, :name),
      gpus: one_of!(opts, :gpus, [false, true, :only], defaults.gpus),
      vpc: vpc!(Keyword.get(opts, :vpc)),
      regions: regions!(Keyword.get(opts, :regions)),
      node_basename: basename!(opts),
      health_check: health_check!(Keyword.get(opts, :health_check)),
      polling_interval: pos_integer!(opts, :polling_interval, defaults.polling_interval),
      api_url: api_url!(Keyword.get(opts, :api_url, defaults.api_url)),
      ca_file: ca_file!(Keyword.get(opts, :ca_file)),
      api_timeout: pos_integer!(opts, :api_timeout, defaults.api_timeout),
      max_backoff: pos_integer!(opts, :max_backoff, defaults.max_backoff),
      max_requests_per_minute:
        pos_integer!(opts, :max_requests_per_minute, defaults.max_requests_per_minute, ""),
      coordinate: boolean!(opts, :coordinate, defaults.coordinate),
      require_listed: boolean!(opts, :require_listed, defaults.require_listed)
    }

    check_combinations!(config, Keyword.has_key?(opts, :network))
  end

  @doc """
  The options of `LibclusterDroplet.list_droplets/1` this config asks for,
  but the token, the deadline and the keep-alive: what to list and how to
  reach the API, shared by the strategy and `mix libcluster_droplet.explain`.
  """
  @spec list_options(t()) :: keyword()
  def list_options(%__MODULE__{} = config) do
    [
      api_url: config.api_url,
      tag_name: config.tag_name,
      name: config.name,
      gpus: config.gpus,
      network: config.network,
      ipv6: config.ipv6,
      ca_file: config.ca_file,
      request_timeout: config.api_timeout
    ]
  end

  @doc """
  A hash of the options that decide which nodes are selected: API URL,
  filters (tags, name, GPU droplets, VPC, regions), network, IP version
  and basename. Strategies follow each other's shares, and adopt stored
  membership, only under the same one. The order of tags and regions does
  not matter, nor does one tag given as a list; a config without `:gpus`,
  `:vpc` and `:regions` hashes as it did before they existed, so nodes of
  an older release still follow each other's shares during an upgrade.
  """
  @spec fingerprint(t()) :: non_neg_integer()
  def fingerprint(%__MODULE__{} = config) do
    base =
      {config.api_url, fingerprint_tags(config.tag_name), config.name, config.network,
       config.ipv6, config.node_basename}

    case {config.gpus, config.vpc, config.regions} do
      {false, nil, nil} -> :erlang.phash2(base)
      {gpus, vpc, regions} -> :erlang.phash2({base, gpus, vpc, regions && Enum.sort(regions)})
    end
  end

  defp fingerprint_tags([tag]), do: tag
  defp fingerprint_tags(tags) when is_list(tags), do: Enum.sort(tags)
  defp fingerprint_tags(tag), do: tag

  defp check_combinations!(%__MODULE__{tag_name: tag, name: name}, _network_given?)
       when tag != nil and is_binary(name) do
    fail(
      "invalid options :tag_name and :name: the DigitalOcean API filters by one or the other, not both; " <>
        "got tag_name: #{inspect(tag)} and name: #{inspect(name)}"
    )
  end

  defp check_combinations!(%__MODULE__{network: :private, ipv6: true}, false = _network_given?) do
    fail(
      "invalid option :ipv6: true needs network: :public; the network defaults to :private " <>
        "and DigitalOcean has no private IPv6 addresses"
    )
  end

  defp check_combinations!(%__MODULE__{network: :private, ipv6: true}, true = _network_given?) do
    fail(
      "invalid option :ipv6: true with network: :private; DigitalOcean has no private IPv6 addresses, " <>
        "so use network: :public with ipv6: true, or ipv6: false"
    )
  end

  defp check_combinations!(config, _network_given?), do: config

  defp token!(:error) do
    fail(
      "missing required option :token: expected a DigitalOcean API token, such as {:system, \"DIGITALOCEAN_TOKEN\"}"
    )
  end

  # The value is never printed: a malformed token may still be most of a secret.
  defp token!({:ok, source}) do
    case LibclusterDroplet.Token.new(source) do
      {:ok, token} -> token
      {:error, message} -> fail("invalid option :token: " <> message)
    end
  end

  defp one_of!(opts, key, allowed, default) do
    value = Keyword.get(opts, key, default)

    if value in allowed,
      do: value,
      else:
        fail(
          "invalid option #{inspect(key)}: expected one of #{inspect(allowed)}, got: #{describe(value)}"
        )
  end

  defp boolean!(opts, key, default) do
    case Keyword.get(opts, key, default) do
      value when is_boolean(value) ->
        value

      other ->
        fail("invalid option #{inspect(key)}: expected true or false, got: #{describe(other)}")
    end
  end

  defp optional_string!(opts, key) do
    case Keyword.get(opts, key) do
      nil ->
        nil

      value when is_binary(value) and byte_size(value) > 0 ->
        value

      other ->
        fail(
          "invalid option #{inspect(key)}: expected a non-empty string or nil, got: #{describe(other)}"
        )
    end
  end

  defp tag_name!(nil), do: nil
  defp tag_name!(tag) when is_binary(tag) and byte_size(tag) > 0, do: tag

  defp tag_name!([_ | _] = tags) do
    if Enum.all?(tags, &(is_binary(&1) and byte_size(&1) > 0)),
      do: Enum.uniq(tags),
      else: tag_name_fail(tags)
  end

  defp tag_name!(other), do: tag_name_fail(other)

  defp tag_name_fail(other) do
    fail(
      "invalid option :tag_name: expected a non-empty string, a non-empty list of them, or nil, " <>
        "got: #{describe(other)}"
    )
  end

  # VPC UUIDs are compared as the API writes them, in lower case; a VPC's
  # name given by mistake would match no droplet and is refused here.
  @uuid ~r/\A[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\z/

  defp vpc!(nil), do: nil
  defp vpc!(:self), do: :self

  defp vpc!(uuid) when is_binary(uuid) do
    lower = String.downcase(uuid)

    if Regex.match?(@uuid, lower),
      do: lower,
      else: vpc_fail(uuid)
  end

  defp vpc!(other), do: vpc_fail(other)

  defp vpc_fail(other) do
    fail(
      "invalid option :vpc: expected nil, :self or a VPC's UUID " <>
        "(such as \"760e09ef-dc84-11e8-981e-3cfdfeaae000\"), got: #{describe(other)}"
    )
  end

  @region ~r/\A[a-z0-9]+\z/

  defp regions!(nil), do: nil

  defp regions!([_ | _] = regions) do
    if Enum.all?(regions, &(is_binary(&1) and Regex.match?(@region, &1))),
      do: Enum.uniq(regions),
      else: regions_fail(regions)
  end

  defp regions!(other), do: regions_fail(other)

  defp regions_fail(other) do
    fail(
      "invalid option :regions: expected nil or a non-empty list of region slugs " <>
        "(such as [\"nyc3\", \"sfo3\"]), got: #{describe(other)}"
    )
  end

  defp basename!(opts) do
    case Keyword.get(opts, :node_basename) do
      nil ->
        nil

      value when is_binary(value) ->
        if LibclusterDroplet.NodeName.valid_basename?(value),
          do: value,
          else:
            fail(
              "invalid option :node_basename: expected the name part of a node name " <>
                "(1-200 ASCII letters, digits, '_' or '-'), got: #{inspect(value)}"
            )

      other ->
        fail("invalid option :node_basename: expected a string or nil, got: #{describe(other)}")
    end
  end

  defp health_check!(nil), do: nil

  defp health_check!({:tcp, opts}) when is_list(opts) do
    unless Keyword.keyword?(opts), do: health_check_fail(opts)

    case Keyword.validate(opts, port: nil, timeout: @default_probe_timeout) do
      {:ok, opts} ->
        port = opts[:port]
        timeout = opts[:timeout]

        if port == nil do
          fail(
            "invalid option :health_check: missing :port; expected {:tcp, port: 1..65535, timeout: ms}"
          )
        end

        unless is_integer(port) and port in 1..65_535 do
          fail(
            "invalid option :health_check: expected :port to be an integer in 1..65535, got: #{describe(port)}"
          )
        end

        unless is_integer(timeout) and timeout > 0 do
          fail(
            "invalid option :health_check: expected :timeout to be a positive integer (ms), got: #{describe(timeout)}"
          )
        end

        {:tcp, port: port, timeout: timeout}

      {:error, unknown} ->
        fail(
          "invalid option :health_check: unknown key(s) #{inspect(unknown)}; " <>
            "expected {:tcp, port: port, timeout: ms}"
        )
    end
  end

  defp health_check!(other), do: health_check_fail(other)

  defp health_check_fail(other) do
    fail(
      "invalid option :health_check: expected nil or {:tcp, port: 1..65535, timeout: ms}, got: #{describe(other)}"
    )
  end

  defp pos_integer!(opts, key, default, unit \\ " (ms)") do
    case Keyword.get(opts, key, default) do
      value when is_integer(value) and value > 0 ->
        value

      other ->
        fail(
          "invalid option #{inspect(key)}: expected a positive integer#{unit}, got: #{describe(other)}"
        )
    end
  end

  defp api_url!(url) when is_binary(url) do
    uri = URI.parse(url)

    cond do
      uri.scheme not in ["http", "https"] or uri.host in [nil, ""] ->
        fail(
          "invalid option :api_url: expected an http(s) URL such as #{inspect(@default_api_url)}, got: #{shown_url(uri)}"
        )

      uri.userinfo != nil or uri.query != nil or uri.fragment != nil ->
        fail(
          "invalid option :api_url: expected no credentials, query or fragment, got: #{shown_url(uri)}"
        )

      uri.scheme == "http" and not loopback?(uri.host) ->
        fail(
          "invalid option :api_url: plain http would send the token unencrypted; " <>
            "http:// is only accepted for loopback hosts, got: #{shown_url(uri)}"
        )

      true ->
        String.trim_trailing(url, "/")
    end
  end

  defp api_url!(other),
    do: fail("invalid option :api_url: expected a string, got: #{describe(other)}")

  # A rejected URL is echoed without what may be a secret: the credentials,
  # query and fragment (a token pasted there), or the whole value when it is
  # not a URL at all (a token pasted in the wrong option).
  defp shown_url(%URI{scheme: scheme, host: host} = uri)
       when is_binary(scheme) and is_binary(host) and host != "" do
    hidden = fn
      nil -> nil
      _ -> "[REDACTED]"
    end

    uri
    |> Map.merge(%{
      userinfo: hidden.(uri.userinfo),
      query: hidden.(uri.query),
      fragment: hidden.(uri.fragment)
    })
    |> URI.to_string()
    |> inspect()
  end

  defp shown_url(%URI{scheme: scheme}) when is_binary(scheme),
    do: "a #{inspect(scheme)} URL without a host (not shown: it may hold a secret)"

  defp shown_url(_uri), do: "a value that is not a URL (not shown: it may be a secret)"

  defp loopback?(host) do
    host = host |> String.trim_leading("[") |> String.trim_trailing("]")

    case :inet.parse_address(String.to_charlist(host)) do
      {:ok, {127, _, _, _}} -> true
      {:ok, {0, 0, 0, 0, 0, 0, 0, 1}} -> true
      _ -> host == "localhost"
    end
  end

  defp ca_file!(nil), do: nil

  defp ca_file!(path) when is_binary(path) do
    if File.regular?(path),
      do: path,
      else:
        fail(
          "invalid option :ca_file: expected a readable PEM file, #{inspect(path)} does not exist"
        )
  end

  defp ca_file!(other),
    do: fail("invalid option :ca_file: expected a file path or nil, got: #{describe(other)}")

  defp describe(value), do: inspect(value, limit: 10, printable_limit: 80)

  defp fail(message), do: raise(ArgumentError, "Cluster.Strategy.Droplet: " <> message)
end
