defmodule LibclusterDroplet.Coordination do
  @moduledoc false
  # One node polls for the cluster (guides/how-it-works.md, "One poller per
  # cluster"): the lowest-named node running the strategy leads and shares
  # its views; a node follows a lower-named sender with its fingerprint,
  # monitors it, polls itself only at a safety interval, and takes over
  # when the leader goes down or stays silent. Decisions here; the strategy
  # does the messaging.

  alias Cluster.Strategy.Droplet.Config
  alias LibclusterDroplet.Log

  defstruct enabled?: false,
            name: nil,
            fingerprint: nil,
            leader: nil,
            leader_ref: nil,
            leader_seen_at: nil,
            leader_interval: nil,
            leader_pace: nil,
            last_api_poll_at: nil,
            passed_over: MapSet.new()

  @type t :: %__MODULE__{}

  # Followers together stay within 1 / @follower_share of the leader's polls.
  @follower_share 4

  # The name a topology's strategy is registered under on every node.
  def registered_name(topology), do: Module.concat(Cluster.Strategy.Droplet, topology)

  # Turns coordination on for the calling strategy once distribution runs,
  # by registering it. With `coordinate: false`, or when the name is taken
  # (with a warning), the config returned says `coordinate: false`.
  @spec enable(t(), atom(), Config.t()) :: {t(), Config.t()}
  def enable(%__MODULE__{enabled?: true} = c, _topology, config), do: {c, config}
  def enable(c, _topology, %{coordinate: false} = config), do: {c, config}

  def enable(%__MODULE__{} = c, topology, config) do
    name = registered_name(topology)

    cond do
      not Node.alive?() ->
        {c, config}

      Process.whereis(name) not in [nil, self()] ->
        Log.warn(topology, "#{inspect(name)} is taken; polling without coordination")

        {c, %{config | coordinate: false}}

      true ->
        if Process.whereis(name) == nil, do: Process.register(self(), name)
        {%{c | enabled?: true, name: name, fingerprint: Config.fingerprint(config)}, config}
    end
  end

  # Monitors the leader's strategy instead of the previous one (`ref`).
  def monitor(%__MODULE__{leader: leader, name: name} = c, previous) do
    if previous, do: Process.demonitor(previous, [:flush])
    %{c | leader_ref: Process.monitor({name, leader})}
  end

  # Whether a tick at `now` (ms) should poll the API or rely on the leader.
  @spec tick(t(), integer(), pos_integer(), pos_integer()) :: :poll | :follow
  def tick(%__MODULE__{} = c, now, interval, cluster_size) do
    if following?(c, now, interval) and not safety_poll_due?(c, now, interval, cluster_size),
      do: :follow,
      else: :poll
  end

  def following?(%__MODULE__{leader: nil}, _now, _interval), do: false

  def following?(%__MODULE__{leader_seen_at: seen} = c, now, interval),
    do: now - seen <= stale_after(c.leader_interval || interval)

  # How long a leader may go without sharing before followers poll.
  def stale_after(interval), do: 2 * interval + 1_000

  # How often a follower polls anyway, in a cluster of `cluster_size` nodes.
  def safety_interval(interval, cluster_size),
    do: @follower_share * max(cluster_size - 1, 1) * interval

  # At the leader's pace when it is slower than ours (it paces itself on a
  # token other clients drain too): followers together then still add at
  # most a quarter of its polls.
  defp safety_poll_due?(%__MODULE__{last_api_poll_at: last} = c, now, interval, size) do
    pace = max(c.leader_pace || interval, interval)
    last != nil and now - last >= safety_interval(pace, size)
  end

  # The wait the leader announced with its last view. Only a view's: a
  # leader whose polls fail announces its backoff in notices, and its
  # followers must go on polling then. Capped as a paced wait is, whatever
  # a peer sends.
  @spec paced(t(), pos_integer()) :: t()
  def paced(%__MODULE__{} = c, wait),
    do: %{c | leader_pace: min(wait, LibclusterDroplet.Schedule.max_paced_wait())}

  # A share from `from` under `fingerprint`, received at `now` by `self`;
  # `interval` is the sender's wait, by which its silence is judged.
  # {:accept, c, :monitor} for a new leader, {:accept, c, :keep} for the
  # one followed, :ignore for a higher-named sender, another fingerprint,
  # or while a lower-named leader is followed.
  @spec share(t(), node(), non_neg_integer(), integer(), node(), pos_integer()) ::
          {:accept, t(), :monitor | :keep} | :ignore
  def share(%__MODULE__{enabled?: true, fingerprint: fp} = c, from, fp, now, self, interval)
      when from < self do
    cond do
      c.leader == from ->
        {:accept,
         %{c | leader_seen_at: now, leader_interval: interval, passed_over: MapSet.new()}, :keep}

      c.leader == nil or from < c.leader or not following?(c, now, interval) ->
        {:accept, follow(c, from, now, interval), :monitor}

      true ->
        :ignore
    end
  end

  def share(_coordination, _from, _fingerprint, _now, _self, _interval), do: :ignore

  # A share (`LibclusterDroplet.Share`) received at `now`: share/6 on its
  # header; a view's announced wait also sets the pace of safety polls.
  def share(%__MODULE__{} = c, share, now, self) do
    with {:accept, c, watch} <-
           share(c, share.from, share.fingerprint, now, self, share.interval) do
      notice? = LibclusterDroplet.Share.notice?(share)
      {:accept, if(notice?, do: c, else: paced(c, share.interval)), watch}
    end
  end

  defp follow(c, leader, seen_at, interval) do
    %{c | leader: leader, leader_ref: nil, leader_seen_at: seen_at, leader_interval: interval}
    |> Map.merge(%{leader_pace: nil, passed_over: MapSet.new()})
  end

  # The leader went away; `connected` are the managed nodes still connected.
  # The lowest-named of them and this node takes over: {:poll_now, c} if
  # it is this node, else {:await, successor, c}, given one stale period.
  @spec leader_down(t(), [node()], integer(), node()) :: {:poll_now, t()} | {:await, node(), t()}
  def leader_down(%__MODULE__{leader: leader} = c, connected, now, self) do
    # Every node given up on since the last real share stays out of the
    # running: a connected node whose strategy is not running answers its
    # monitor with an immediate DOWN, and two such nodes would otherwise be
    # awaited in turn forever, each wait resetting the staleness clock.
    passed_over = MapSet.put(c.passed_over, leader)

    case Enum.min([self | Enum.reject(connected, &MapSet.member?(passed_over, &1))]) do
      ^self ->
        {:poll_now, follow(c, nil, nil, nil)}

      successor ->
        {:await, successor,
         %{c | leader: successor, leader_ref: nil, leader_seen_at: now, passed_over: passed_over}}
    end
  end

  # Whether this node, after a successful poll, shares what it found.
  def leads?(%__MODULE__{enabled?: enabled?} = c, now, interval),
    do: enabled? and not following?(c, now, interval)
end
