defmodule LibclusterDroplet.Coordination do
  @moduledoc false
  # Keeps a cluster's API traffic that of one node, whatever the cluster size.
  #
  # Once nodes are connected, only one of them polls the API at
  # `polling_interval`: the lowest-named node among those running the
  # strategy for the topology. After each successful poll it sends what it
  # found (each selected droplet's name and address) to the strategy on every
  # node it is connected to. A node that receives such a share from a node
  # with a lower name than its own follows it: it applies the share as if it
  # had polled (health checks and membership stay its own), and polls the API
  # itself only at a slow safety interval, `4 × (cluster size − 1) ×
  # polling_interval`, so that all followers together add at most a quarter
  # of the leader's requests.
  #
  # A follower takes over within one interval when the poller goes away: it
  # monitors the leader's strategy process, and on its `DOWN` (the process or
  # its node died, or the connection dropped) the lowest-named of the
  # remaining nodes polls at once while the others wait for its share. A
  # leader that stops sharing without dying (its API calls failing, say) is
  # given up after `2 × polling_interval + 1 s`. A node connected to no one
  # never receives a share, so it polls at its own full rate until it joins.
  #
  # Shares are only accepted from a node whose strategy has the same
  # fingerprint: API URL, filters, network, IP version and basename. This
  # module holds the decisions; the strategy does the messaging.

  defstruct enabled?: false,
            name: nil,
            fingerprint: nil,
            leader: nil,
            leader_ref: nil,
            leader_seen_at: nil,
            leader_interval: nil,
            last_api_poll_at: nil,
            passed_over: MapSet.new()

  @type t :: %__MODULE__{
          enabled?: boolean(),
          name: atom() | nil,
          fingerprint: non_neg_integer() | nil,
          leader: node() | nil,
          leader_ref: reference() | nil,
          leader_seen_at: integer() | nil,
          leader_interval: pos_integer() | nil,
          last_api_poll_at: integer() | nil,
          passed_over: MapSet.t(node())
        }

  # Followers together stay within 1 / @follower_share of the leader's polls.
  @follower_share 4

  @doc "The name a topology's strategy is registered under on every node."
  @spec registered_name(atom()) :: atom()
  def registered_name(topology), do: Module.concat(Cluster.Strategy.Droplet, topology)

  @doc """
  Turns coordination on for a topology's strategy (the calling process)
  once distribution runs, by registering it under `registered_name/1`.
  Returns the coordination and the config: with `coordinate: false`, or
  when the name is taken (then with a warning), the config says
  `coordinate: false` and the strategy polls on its own.
  """
  @spec enable(t(), atom(), Cluster.Strategy.Droplet.Config.t()) ::
          {t(), Cluster.Strategy.Droplet.Config.t()}
  def enable(%__MODULE__{enabled?: true} = c, _topology, config), do: {c, config}
  def enable(c, _topology, %{coordinate: false} = config), do: {c, config}

  def enable(%__MODULE__{} = c, topology, config) do
    name = registered_name(topology)

    cond do
      not Node.alive?() ->
        {c, config}

      Process.whereis(name) not in [nil, self()] ->
        LibclusterDroplet.Log.warn(
          topology,
          "#{inspect(name)} is taken; polling without coordination"
        )

        {c, %{config | coordinate: false}}

      true ->
        if Process.whereis(name) == nil, do: Process.register(self(), name)
        fingerprint = Cluster.Strategy.Droplet.Config.fingerprint(config)
        {%{c | enabled?: true, name: name, fingerprint: fingerprint}, config}
    end
  end

  @doc "Monitors the leader's strategy, instead of the previous one (`ref`)."
  @spec monitor(t(), reference() | nil) :: t()
  def monitor(%__MODULE__{leader: leader, name: name} = c, previous) do
    if previous, do: Process.demonitor(previous, [:flush])
    %{c | leader_ref: Process.monitor({name, leader})}
  end

  @doc "Whether, at `now` (ms), a poll tick should call the API or rely on the leader."
  @spec tick(t(), integer(), pos_integer(), pos_integer()) :: :poll | :follow
  def tick(%__MODULE__{} = coordination, now, interval, cluster_size) do
    if following?(coordination, now, interval) and
         not safety_poll_due?(coordination, now, interval, cluster_size),
       do: :follow,
       else: :poll
  end

  @doc "Whether this node currently follows a live leader."
  @spec following?(t(), integer(), pos_integer()) :: boolean()
  def following?(%__MODULE__{leader: nil}, _now, _interval), do: false

  def following?(%__MODULE__{leader_seen_at: seen} = c, now, interval),
    do: now - seen <= stale_after(c.leader_interval || interval)

  @doc "How long a leader may go without sharing before followers poll themselves."
  @spec stale_after(pos_integer()) :: pos_integer()
  def stale_after(interval), do: 2 * interval + 1_000

  @doc "How often a follower polls the API anyway, in a cluster of `cluster_size` nodes."
  @spec safety_interval(pos_integer(), pos_integer()) :: pos_integer()
  def safety_interval(interval, cluster_size),
    do: @follower_share * max(cluster_size - 1, 1) * interval

  defp safety_poll_due?(%__MODULE__{last_api_poll_at: nil}, _now, _interval, _size), do: false

  defp safety_poll_due?(%__MODULE__{last_api_poll_at: last}, now, interval, size),
    do: now - last >= safety_interval(interval, size)

  @doc """
  Decides on a share received from `from` with `fingerprint`, at `now`, by
  the node `self`; `interval` is the sender's `polling_interval`, by which
  its silence is judged from then on.

  Returns `{:accept, coordination}` when this node should apply it (and
  follow `from`), with `:monitor` set when `from` is a new leader to
  monitor, or `:ignore` (the sender is not lower-named, its strategy differs,
  or a lower-named leader is followed).
  """
  @spec share(t(), node(), non_neg_integer(), integer(), node(), pos_integer()) ::
          {:accept, t(), :monitor | :keep} | :ignore
  def share(
        %__MODULE__{enabled?: true, fingerprint: fingerprint} = c,
        from,
        fingerprint,
        now,
        self,
        interval
      )
      when from < self do
    cond do
      c.leader == from ->
        {:accept,
         %{c | leader_seen_at: now, leader_interval: interval, passed_over: MapSet.new()}, :keep}

      c.leader == nil or from < c.leader or not following?(c, now, interval) ->
        {:accept,
         %{
           c
           | leader: from,
             leader_ref: nil,
             leader_seen_at: now,
             leader_interval: interval,
             passed_over: MapSet.new()
         }, :monitor}

      true ->
        :ignore
    end
  end

  def share(_coordination, _from, _fingerprint, _now, _self, _interval), do: :ignore

  @doc """
  The leader went away; `connected` are the nodes this node still manages
  and is connected to. The lowest-named of them and this node takes over:
  `{:poll_now, coordination}` if it is this node, else `{:await, successor,
  coordination}`, with the successor given one stale period to share.
  """
  @spec leader_down(t(), [node()], integer(), node()) :: {:poll_now, t()} | {:await, node(), t()}
  def leader_down(%__MODULE__{leader: leader} = c, connected, now, self) do
    # Every node given up on since the last real share stays out of the
    # running: a connected node whose strategy is not running answers its
    # monitor with an immediate DOWN, and two such nodes would otherwise be
    # awaited in turn forever, each wait resetting the staleness clock.
    passed_over = MapSet.put(c.passed_over, leader)

    case Enum.min([self | Enum.reject(connected, &MapSet.member?(passed_over, &1))]) do
      ^self ->
        {:poll_now,
         %{
           c
           | leader: nil,
             leader_ref: nil,
             leader_seen_at: nil,
             leader_interval: nil,
             passed_over: MapSet.new()
         }}

      successor ->
        {:await, successor,
         %{c | leader: successor, leader_ref: nil, leader_seen_at: now, passed_over: passed_over}}
    end
  end

  @doc "Whether this node, after a successful API poll, should share what it found."
  @spec leads?(t(), integer(), pos_integer()) :: boolean()
  def leads?(%__MODULE__{enabled?: enabled?} = c, now, interval),
    do: enabled? and not following?(c, now, interval)
end
