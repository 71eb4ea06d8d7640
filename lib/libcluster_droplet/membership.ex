defmodule LibclusterDroplet.Membership do
  @moduledoc false
  # Connects and disconnects nodes the way libcluster does: through
  # Cluster.Strategy.connect_nodes/4 and disconnect_nodes/4 when libcluster
  # is loaded, else through a fallback that behaves the same (nodes in
  # `list_nodes` and this node skipped, one node after another through the
  # MFA, libcluster's log lines and telemetry events). And leaving: asking
  # a node to leave by itself, or this node leaving (guides/how-it-works.md).

  alias LibclusterDroplet.{Log, Telemetry}

  @compile {:no_warn_undefined, Cluster.Strategy}

  def libcluster? do
    Code.ensure_loaded?(Cluster.Strategy) and
      function_exported?(Cluster.Strategy, :connect_nodes, 4) and
      function_exported?(Cluster.Strategy, :disconnect_nodes, 4)
  end

  # :ok or {:error, [{node, false | :ignored}]}
  def connect_nodes(topology, connect, list_nodes, nodes) do
    if libcluster?(),
      do: Cluster.Strategy.connect_nodes(topology, connect, list_nodes, nodes),
      else: fallback_connect(topology, connect, list_nodes, nodes)
  end

  # :ok or {:error, [{node, reason}]}
  def disconnect_nodes(topology, disconnect, list_nodes, nodes) do
    if libcluster?(),
      do: Cluster.Strategy.disconnect_nodes(topology, disconnect, list_nodes, nodes),
      else: fallback_disconnect(topology, disconnect, list_nodes, nodes)
  end

  # Asks `node` to leave the cluster by itself (:global.disconnect/0 on it),
  # which removes it alone: cut off from here, OTP's
  # prevent_overlapping_partitions would cut healthy nodes apart too. A
  # cast to its `rex` server (every node runs one), as rpc:cast/4 sends it,
  # without setting up a connection; `user` makes it use the node's own
  # group leader. :noconnect when the node is not connected.
  @spec request_leave(node()) :: :ok | :noconnect
  def request_leave(node) do
    message = {:"$gen_cast", {:cast, :global, :disconnect, [], :user}}

    case :erlang.send({:rex, node}, message, [:noconnect]) do
      :noconnect -> :noconnect
      _ -> :ok
    end
  end

  # This node leaves (:global.disconnect/0, OTP 25.1+), then disconnects
  # from any of `nodes` still connected: a connection `global` had not
  # synced yet is not one it knows to drop. Returns the nodes left.
  @spec leave_cluster([node()]) :: [node()]
  def leave_cluster(nodes) do
    left = if function_exported?(:global, :disconnect, 0), do: :global.disconnect(), else: []
    rest = for node <- Node.list(), node in nodes or left == [], Node.disconnect(node), do: node
    Enum.uniq(left ++ rest)
  end

  def fallback_connect(topology, {_, _, _} = connect, {_, _, _} = list_nodes, nodes) do
    current = apply_mfa(list_nodes, [])

    nodes
    |> Enum.reject(&(&1 == Node.self() or &1 in current))
    |> each_node(topology, :connect_node, connect, &connect_outcome/2)
  end

  def fallback_disconnect(topology, {_, _, _} = disconnect, {_, _, _} = list_nodes, nodes) do
    current = apply_mfa(list_nodes, [])

    nodes
    |> Enum.filter(&(&1 != Node.self() and &1 in current))
    |> each_node(topology, :disconnect_node, disconnect, &disconnect_outcome/2)
  end

  # One node after another, as libcluster does: apply the MFA (timed in
  # native units, as libcluster's telemetry), emit the event, log, and
  # collect what counts as a failure. `outcome` gives, per result, the
  # telemetry reason (:ok for success), libcluster's log line and the
  # failure to report ([] for none).
  defp each_node(nodes, topology, kind, mfa, outcome) do
    failed =
      Enum.flat_map(nodes, fn node ->
        started = System.monotonic_time()
        {reason, message, failure} = outcome.(node, apply_mfa(mfa, [node]))
        measurements = %{duration: System.monotonic_time() - started}
        metadata = %{node: node, topology: topology}

        if reason == :ok do
          Telemetry.execute([:libcluster, kind, :ok], measurements, metadata)
          Log.info(topology, message)
        else
          metadata = Map.put(metadata, :reason, reason)
          Telemetry.execute([:libcluster, kind, :error], measurements, metadata)
          Log.warn(topology, message)
        end

        Enum.map(failure, &{node, &1})
      end)

    if failed == [], do: :ok, else: {:error, failed}
  end

  defp connect_outcome(node, true), do: {:ok, "connected to #{inspect(node)}", []}

  defp connect_outcome(node, false),
    do: {:unreachable, "unable to connect to #{inspect(node)}", [false]}

  defp connect_outcome(node, :ignored),
    do:
      {:not_part_of_network, "unable to connect to #{inspect(node)}: not part of network",
       [:ignored]}

  defp disconnect_outcome(node, true), do: {:ok, "disconnected from #{inspect(node)}", []}

  defp disconnect_outcome(node, false),
    do:
      {:already_disconnected,
       "disconnect from #{inspect(node)} failed because we're already disconnected", []}

  defp disconnect_outcome(node, :ignored),
    do:
      {:not_part_of_network,
       "disconnect from #{inspect(node)} failed because we're not part of the network", []}

  defp disconnect_outcome(node, reason),
    do:
      {inspect(reason), "disconnect from #{inspect(node)} failed with: #{inspect(reason)}",
       [reason]}

  defp apply_mfa({module, fun, args}, extra) do
    arity = length(args) + length(extra)

    # libcluster raises on an MFA that is not exported with the right arity; so do we.
    unless Code.ensure_loaded?(module) and function_exported?(module, fun, arity) do
      raise ArgumentError, "#{inspect(module)}.#{fun}/#{arity} is undefined or private"
    end

    apply(module, fun, args ++ extra)
  end
end
