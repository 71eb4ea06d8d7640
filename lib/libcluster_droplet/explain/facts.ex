defmodule LibclusterDroplet.Explain.Facts do
  @moduledoc """
  What an explanation is built from, gathered by the strategy (a cheap copy
  of its state, `of_strategy/2`) or by `mix libcluster_droplet.explain`
  (`mode: :offline`). Times are Unix milliseconds; `now` is when the facts
  were gathered. Never the token.

    * `config`: the options that shape the explanation (`:network`,
      `:ipv6`, `:node_basename`, `:health_check`, `:require_listed`,
      `:coordinate`, `:polling_interval` and the filters);
    * `view`: the last view applied, `%{source: :listing | {:share, from},
      listed_at:, applied_at:, verdicts: [LibclusterDroplet.Verdict.t()],
      pool: LibclusterDroplet.Listing.pool() | nil}`, or `nil`;
    * `probes`: each node's last health check (`t:LibclusterDroplet.NodeWatch.probe/0`);
    * `connects`: each node's consecutive connect failures,
      `%{count:, reason:, retry_at:}`;
    * `in_flight`, `managed`, `connected`, `removing`: nodes with a connect
      in flight, nodes the strategy wants connected, nodes connected now,
      nodes asked to leave; `since`: when each managed node was first seen
      connected;
    * `polls`, `last_poll_at`, `failures`, `last_error`, `not_before`: API
      polls that succeeded, the last one, consecutive failed ones, the last
      failure (`{class, message}`) and the rate-limit floor;
    * `polling`: `:leads`, `{:follows, node, last_share_at}` or `:alone`;
    * `notes`: checks to show first (the mix task's).
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

  @config_keys [
    :network,
    :ipv6,
    :node_basename,
    :health_check,
    :require_listed,
    :coordinate,
    :polling_interval
  ]

  @doc "The options of a config that shape an explanation (never the token)."
  @spec config(Cluster.Strategy.Droplet.Config.t()) :: map()
  def config(config),
    do: Map.take(config, @config_keys ++ LibclusterDroplet.Filters.options())

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
