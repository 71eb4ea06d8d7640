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
  # collect what counts as a failure.
  defp each_node(nodes, topology, kind, mfa, outcome) do
    bad =
      Enum.reduce(nodes, [], fn node, bad ->
        started = System.monotonic_time()
        result = apply_mfa(mfa, [node])
        measurements = %{duration: System.monotonic_time() - started}
        {event, level, message, failure} = outcome.(node, result)
        metadata = %{node: node, topology: topology}

        {status, metadata} =
          case event do
            :ok -> {:ok, metadata}
            {:error, why} -> {:error, Map.put(metadata, :reason, why)}
          end

        Telemetry.execute([:libcluster, kind, status], measurements, metadata)

        if level == :info, do: Log.info(topology, message), else: Log.warn(topology, message)

        case failure do
          :none -> bad
          {:failed, value} -> [{node, value} | bad]
        end
      end)

    if bad == [], do: :ok, else: {:error, Enum.reverse(bad)}
  end

  # {telemetry outcome, log level, log line, failure} per result, in
  # libcluster's words.
  defp connect_outcome(node, true), do: {:ok, :info, "connected to #{inspect(node)}", :none}

  defp connect_outcome(node, false),
    do: {{:error, :unreachable}, :warn, "unable to connect to #{inspect(node)}", {:failed, false}}

  defp connect_outcome(node, :ignored) do
    {{:error, :not_part_of_network}, :warn,
     "unable to connect to #{inspect(node)}: not part of network", {:failed, :ignored}}
  end

  defp disconnect_outcome(node, true),
    do: {:ok, :info, "disconnected from #{inspect(node)}", :none}

  defp disconnect_outcome(node, false) do
    {{:error, :already_disconnected}, :warn,
     "disconnect from #{inspect(node)} failed because we're already disconnected", :none}
  end

  defp disconnect_outcome(node, :ignored) do
    {{:error, :not_part_of_network}, :warn,
     "disconnect from #{inspect(node)} failed because we're not part of the network", :none}
  end

  defp disconnect_outcome(node, reason) do
    {{:error, inspect(reason)}, :warn,
     "disconnect from #{inspect(node)} failed with: #{inspect(reason)}", {:failed, reason}}
  end

  defp apply_mfa({module, fun, args}, extra) do
    arity = length(args) + length(extra)

    # libcluster raises on an MFA that is not exported with the right arity; so do we.
    unless Code.ensure_loaded?(module) and function_exported?(module, fun, arity) do
      raise ArgumentError, "#{inspect(module)}.#{fun}/#{arity} is undefined or private"
    end

    apply(module, fun, args ++ extra)
  end
end
