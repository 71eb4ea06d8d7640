defmodule LibclusterDroplet.Explain.Facts do
  @moduledoc """
  What a report is built from: a copy of the strategy's state, or the mix
  task's listing (`mode: :offline`). Times are Unix milliseconds (`now`:
  when gathered); never the token. `config` holds the options that shape
  the report; `view` is the last view applied (`source`, `listed_at`,
  `applied_at`, `verdicts`, `pool`); `probes`, `connects`, `in_flight`,
  `managed`, `connected`, `removing` and `since` are the strategy's nodes;
  `polls`, `last_poll_at`, `failures`, `last_error` and `not_before` its
  API polls and rate-limit floor; `polling` is `:leads`,
  `{:follows, node, last_share_at}` or `:alone`.
  """

  alias LibclusterDroplet.{Coordination, Floor}

  defstruct topology: nil,
            self: nil,
            now: 0,
            mode: :strategy,
            alive?: false,
            longnames?: nil,
            config: %{},
            view: nil,
            probes: %{},
            connects: %{},
            in_flight: [],
            managed: [],
            connected: [],
            removing: [],
            since: %{},
            polls: 0,
            last_poll_at: nil,
            failures: 0,
            last_error: nil,
            not_before: nil,
            polling: :alone,
            notes: []

  @type t :: %__MODULE__{}

  @config_keys ~w(network ipv6 node_basename health_check require_listed coordinate
                  polling_interval)a

  @doc false
  # The options that shape an explanation (never the token).
  def config(config), do: Map.take(config, @config_keys ++ LibclusterDroplet.Filters.options())

  @doc false
  # A strategy's facts, from its state; `connected` as its list_nodes MFA says.
  @spec of_strategy(Cluster.Strategy.Droplet.t(), [node()]) :: t()
  def of_strategy(state, connected) do
    mono_now = System.monotonic_time(:millisecond)
    unix_now = System.system_time(:millisecond)
    to_unix = fn mono -> mono && unix_now - (mono_now - mono) end
    %{members: m, schedule: s, coordination: c} = state

    %__MODULE__{
      topology: state.topology,
      self: Node.self(),
      now: unix_now,
      alive?: Node.alive?(),
      config: config(state.config),
      view: state.view && view(state.view),
      probes: m.watch.probes,
      connects:
        Map.new(m.connector.failures, fn {n, f} -> {n, %{f | retry_at: to_unix.(f.retry_at)}} end),
      in_flight: LibclusterDroplet.Connector.nodes(m.connector),
      managed: MapSet.to_list(m.managed),
      connected: connected,
      removing: Map.keys(m.removing),
      since: m.watch.since,
      polls: s.polls,
      last_poll_at: s.last_poll_at,
      failures: s.failures,
      last_error: s.last_error,
      not_before: Floor.not_before(state.config.api_url),
      polling: polling(c, mono_now, state.config.polling_interval, to_unix)
    }
  end

  defp view(view) do
    source = with {:listing, _started} <- view.source, do: :listing

    %{
      source: source,
      listed_at: elem(view.key, 0),
      applied_at: view.at,
      verdicts: view.verdicts,
      pool: view.pool
    }
  end

  defp polling(%Coordination{enabled?: true} = c, now, interval, to_unix) do
    cond do
      Coordination.following?(c, now, interval) ->
        {:follows, c.leader, to_unix.(c.leader_seen_at)}

      Node.list() != [] ->
        :leads

      true ->
        :alone
    end
  end

  defp polling(_c, _now, _interval, _to_unix), do: :alone
end
