defmodule LibclusterDroplet.Members do
  @moduledoc false
  # This node's side of the cluster: which nodes it wants connected, and the
  # effects that get it there. Decides with Plan, Connector and Removal;
  # connects run in tasks of the strategy's task supervisor (one libcluster
  # connect_nodes/4 each, given up after @connect_timeout ms); nodes no
  # longer selected are asked to leave; an unlisted node leaves by itself.
  # It owns no timer: next_checks/1 says when to call progress/1 and
  # expire_connects/1.

  alias LibclusterDroplet.{Connector, HealthCheck, Log, Membership, NodeWatch, Pipeline, Plan}
  alias LibclusterDroplet.Removal
  alias LibclusterDroplet.Explain.Format

  @connect_timeout 30_000

  @enforce_keys [:topology, :connect, :disconnect, :list_nodes, :tasks, :retry, :max_backoff]
  defstruct @enforce_keys ++
              [
                managed: MapSet.new(),
                selected: MapSet.new(),
                removing: %{},
                strikes: %{},
                connector: %Connector{},
                abandoned: %{},
                listed?: nil,
                watch: %NodeWatch{}
              ]

  # `managed`: the nodes wanted connected; `selected`: those the last view
  # selected; `strikes`: failed checks in a row; `abandoned`: connects to
  # nodes no longer wanted, watched in case they succeed anyway; `listed?`:
  # whether this node was selected in the last view.
  @type t :: %__MODULE__{}

  # The members of a strategy started with `fields` (libcluster's
  # `:topology` and MFAs, its defaults when absent); `tasks` is set once
  # the strategy runs.
  @spec new!(map(), Cluster.Strategy.Droplet.Config.t()) :: t()
  def new!(fields, config) do
    mfa = fn key, default ->
      case Map.get(fields, key) do
        {m, f, a} = mfa when is_atom(m) and is_atom(f) and is_list(a) -> mfa
        nil -> default
        _ -> raise ArgumentError, "Cluster.Strategy.Droplet: #{key} must be an MFA tuple"
      end
    end

    %__MODULE__{
      topology: Map.fetch!(fields, :topology),
      connect: mfa.(:connect, {:net_kernel, :connect_node, []}),
      disconnect: mfa.(:disconnect, {:erlang, :disconnect_node, []}),
      list_nodes: mfa.(:list_nodes, {:erlang, :nodes, [:connected]}),
      tasks: nil,
      retry: config.polling_interval,
      max_backoff: config.max_backoff
    }
  end

  # The nodes connected now, as the `list_nodes` MFA sees them.
  def connected(%__MODULE__{list_nodes: {m, f, a}}), do: apply(m, f, a)

  # Applies a view's verdicts (their health counts when `checked?`): the
  # desired set, removals (or leaving, when this node is `unlisted?`: it
  # must be listed to join, and is not), connects.
  @spec apply_view(t(), [LibclusterDroplet.Verdict.t()], boolean(), boolean()) :: t()
  def apply_view(%__MODULE__{} = m, verdicts, checked?, unlisted?) do
    targets = verdicts |> Pipeline.targets() |> Enum.map(&elem(&1, 0))
    selected = MapSet.new(targets)
    health = if checked?, do: health(verdicts), else: :unchecked
    {desired, strikes} = Plan.decide(targets, health, m.managed, m.strikes, unlisted?)
    # Every node known here, managed or merely selected (one dropped for
    # its checks included), that is no longer selected.
    stale = m.managed |> MapSet.union(m.selected) |> MapSet.difference(selected)
    keep = NodeWatch.keep(m.watch, selected)
    m = %{m | managed: desired, strikes: strikes, selected: selected, watch: keep}
    m = note_listed(m, not unlisted?, verdicts)
    m = if unlisted?, do: leave_cluster(m, stale), else: start_removals(m, stale)
    m |> forget_unwanted() |> dispatch()
  end

  defp health(verdicts) do
    for %{stage: :selected, health: health} = v <- verdicts,
        health != nil,
        into: %{},
        do: {v.node, health}
  end

  # Records the checks of a phase (its targets, checked from `probed_at`
  # on; the NIF's `results` in the same order) for explain, and logs a node
  # failing NodeWatch.warn_after() in a row once, and its recovery.
  @spec note_checks(t(), map(), list(), LibclusterDroplet.HealthCheck.t()) :: t()
  def note_checks(m, %{verdicts: verdicts, probed_at: probed_at}, results, check) do
    at = System.system_time(:millisecond)
    batch = System.monotonic_time() - probed_at
    batch_ms = System.convert_time_unit(batch, :native, :microsecond) / 1000
    targets = Pipeline.targets(verdicts)

    {watch, events} =
      NodeWatch.probed(m.watch, targets, results, at, batch_ms, HealthCheck.timeout(check))

    for {{node, _}, {_, {:error, reason}}} <- Enum.zip(targets, results) do
      Log.debug(m.topology, fn ->
        "health check of #{inspect(node)} failed: #{inspect(reason)}"
      end)
    end

    for {event, node, probe} <- events do
      what = HealthCheck.describe(check)

      case event do
        :failing ->
          {:error, reason} = probe.result

          Log.warn(
            m.topology,
            "#{inspect(node)} has failed its health check on #{what} for #{probe.failed} polls in a " <>
              "row: #{Format.describe_probe_error(reason)}; this node does not connect to it until it " <>
              "passes (Cluster.Strategy.Droplet.explain(#{inspect(m.topology)}) shows every stage)"
          )

        :recovered ->
          Log.info(m.topology, "#{inspect(node)} passes its health check on #{what} again")
      end
    end

    %{m | watch: watch}
  end

  def note_connected(m, connected) do
    now = System.system_time(:millisecond)
    %{m | watch: NodeWatch.connected(m.watch, MapSet.intersection(m.managed, connected), now)}
  end

  # When the strategy should next call progress/1 (`:removals`) and
  # expire_connects/1 (`:connects`), in ms from now, or nil.
  @spec next_checks(t()) :: %{removals: non_neg_integer() | nil, connects: integer() | nil}
  def next_checks(m) do
    deadline = Connector.next_deadline(m.connector)

    %{
      removals: Removal.next_check(m.removing, now(), m.retry),
      connects: deadline && max(deadline - now(), 0)
    }
  end

  ## This node's listing

  # One warning when this node is missing from the selection, naming the
  # name its own droplet needs, found by its address; an info line when
  # it is back.
  defp note_listed(%{listed?: listed?} = m, listed?, _verdicts), do: m

  defp note_listed(m, listed?, verdicts) do
    cond do
      not listed? ->
        Log.warn(
          m.topology,
          Format.not_listed(verdicts, Node.self()) <>
            ": fix RELEASE_NODE or :node_basename, or set require_listed: false on a node that " <>
            "is not a droplet"
        )

      m.listed? == false ->
        Log.info(
          m.topology,
          "#{inspect(Node.self())} is among the selected droplets again; joining"
        )

      true ->
        :ok
    end

    %{m | listed?: listed?}
  end

  ## Removal (decisions in LibclusterDroplet.Removal)

  # This node is not selected: it leaves by itself, which removes it alone.
  defp leave_cluster(m, stale) do
    visible = MapSet.new(Node.list())
    cluster = Enum.concat([stale, Map.keys(m.removing), m.selected])

    if Enum.any?(cluster, &MapSet.member?(visible, &1)) do
      topology = m.topology

      Task.Supervisor.start_child(m.tasks, fn ->
        left = Membership.leave_cluster(cluster)

        Log.info(
          topology,
          "left the cluster (#{length(left)} nodes): this node's droplet is no longer selected"
        )
      end)
    end

    %{m | removing: %{}}
  end

  # Starts removing `stale` nodes, such as one an abandoned connect reached.
  defp start_removals(m, stale) do
    if Enum.empty?(stale) and map_size(m.removing) == 0 do
      m
    else
      {visible, connected} = {MapSet.new(Node.list()), MapSet.new(connected(m))}
      {actions, removing} = Removal.start(m.removing, stale, visible, connected, m.managed, now())
      run_removals(%{m | removing: removing}, actions)
    end
  end

  # Asks again the nodes that did not leave, retries failed disconnects.
  def progress(m) do
    {visible, connected} = {MapSet.new(Node.list()), MapSet.new(connected(m))}
    {actions, removing} = Removal.due(m.removing, visible, connected, now(), m.retry)
    run_removals(%{m | removing: removing}, actions)
  end

  defp run_removals(m, actions) do
    Enum.reduce(actions, m, fn
      {:ask_to_leave, node}, m ->
        Log.info(
          m.topology,
          "asking #{inspect(node)} to leave the cluster: its droplet is no longer selected"
        )

        Membership.request_leave(node)
        m

      {:still_connected, node}, m ->
        Log.warn(
          m.topology,
          "#{inspect(node)} is still connected after #{Removal.warn_after()} requests to leave; it is " <>
            "not disconnected from here, which would cut healthy nodes apart (OTP's " <>
            "prevent_overlapping_partitions): it needs OTP 25.1+ (:global.disconnect/0) and to answer; " <>
            "asking again with backoff"
        )

        m

      {:disconnect, node}, m ->
        result = Membership.disconnect_nodes(m.topology, m.disconnect, m.list_nodes, [node])
        outcome = if result == :ok, do: :ok, else: :error
        %{m | removing: Removal.disconnected(m.removing, node, outcome)}
    end)
  end

  ## Connects, off the strategy's process

  defp dispatch(m) do
    connected = MapSet.new(connected(m))
    m = note_connected(m, connected)
    {nodes, connector} = Connector.next(m.connector, Enum.sort(m.managed), connected, now())
    args = [m.topology, m.connect, m.list_nodes]

    Enum.reduce(nodes, %{m | connector: connector}, fn node, m ->
      task = Task.Supervisor.async_nolink(m.tasks, __MODULE__, :connect_one, args ++ [node])
      deadline = now() + @connect_timeout
      %{m | connector: Connector.started(m.connector, node, task.ref, task.pid, deadline)}
    end)
  end

  # Runs in a task: one libcluster connect_nodes/4 call per node, so its
  # log lines and telemetry are libcluster's own.
  def connect_one(topology, connect, list_nodes, node) do
    case Membership.connect_nodes(topology, connect, list_nodes, [node]) do
      :ok -> :ok
      {:error, [{^node, reason} | _]} -> {:error, reason}
      {:error, other} -> {:error, other}
    end
  end

  # A task's answer or exit (`{:exit, reason}`): {:ok, members} when `ref`
  # is a connect of these members', :error otherwise.
  def task_done(m, ref, outcome) do
    cond do
      Connector.in_flight?(m.connector, ref) -> {:ok, connect_done(m, ref, outcome)}
      Map.has_key?(m.abandoned, ref) -> {:ok, abandoned_done(m, ref, outcome)}
      true -> :error
    end
  end

  # Gives up the connects running past their deadline.
  def expire_connects(m) do
    m.connector
    |> Connector.expired(now())
    |> Enum.reduce(m, fn {ref, pid}, m ->
      Process.demonitor(ref, [:flush])
      Process.exit(pid, :kill)
      connect_done(m, ref, {:error, :timeout})
    end)
  end

  defp connect_done(m, ref, outcome) do
    %{node: node} = m.connector.in_flight[ref]

    # A connect that said yes for a node that is not connected failed.
    outcome =
      case outcome do
        :ok -> if node in connected(m), do: :ok, else: {:error, :not_connected}
        {:error, _} = error -> error
        other -> {:error, other}
      end

    previous = get_in(m.connector.failures, [node, :count]) || 0
    backoff = &LibclusterDroplet.Schedule.backoff(m.retry, &1, m.max_backoff)
    {node, failure, connector} = Connector.finished(m.connector, ref, outcome, now(), backoff)
    m = %{m | connector: connector}
    log_connect(m, node, previous, failure)
    dispatch(m)
  end

  # A debug line per failure; one warning when a node has failed
  # NodeWatch.warn_after() times in a row, one info line when it connects.
  defp log_connect(m, node, previous, failure) do
    if failure do
      Log.debug(m.topology, fn ->
        "connecting to #{inspect(node)} failed (#{Format.describe_connect_error(failure.reason)}, " <>
          "#{failure.count} in a row); next attempt in #{failure.retry_at - now()} ms"
      end)
    end

    case NodeWatch.connect_event(previous, if(failure, do: {:error, failure.count}, else: :ok)) do
      :failing ->
        Log.warn(
          m.topology,
          "connecting to #{inspect(node)} has failed #{failure.count} times in a row " <>
            "(#{Format.describe_connect_error(failure.reason)}); retrying with backoff, next attempt " <>
            "in #{max(failure.retry_at - now(), 0)} ms; " <>
            "Cluster.Strategy.Droplet.explain(#{inspect(m.topology)}) diagnoses why"
        )

      :recovered ->
        Log.info(m.topology, "connected to #{inspect(node)} after #{previous} failed attempts")

      nil ->
        :ok
    end
  end

  # Connects to nodes no longer wanted are abandoned, not killed: killing
  # the task would not stop net_kernel's setup, which can still succeed.
  defp forget_unwanted(m) do
    {gone, connector} = Connector.forget(m.connector, m.managed)
    %{m | connector: connector, abandoned: Map.merge(m.abandoned, Map.new(gone))}
  end

  # An abandoned connect that succeeded after its node stopped being
  # selected: that node is removed like any other.
  defp abandoned_done(m, ref, outcome) do
    {node, abandoned} = Map.pop(m.abandoned, ref)
    m = %{m | abandoned: abandoned}

    if outcome == :ok and not MapSet.member?(m.selected, node) and m.listed? != false,
      do: start_removals(m, [node]),
      else: m
  end

  defp now, do: System.monotonic_time(:millisecond)
end
