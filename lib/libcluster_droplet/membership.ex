defmodule LibclusterDroplet.Membership do
  @moduledoc """
  Connects and disconnects nodes the way libcluster does.

  When libcluster is loaded, `connect_nodes/4` and `disconnect_nodes/4`
  delegate to `Cluster.Strategy.connect_nodes/4` and
  `Cluster.Strategy.disconnect_nodes/4`. Without it they behave the same:
  nodes already listed by `list_nodes` (and this node) are skipped, each
  connect or disconnect goes through the given MFA with the node appended to
  its arguments, one node after another, every outcome is logged with the
  `[libcluster:<topology>]` prefix and reported as a
  `[:libcluster, :connect_node | :disconnect_node, :ok | :error]` telemetry
  event (when `:telemetry` is loaded).
  """

  alias LibclusterDroplet.{Log, Telemetry}

  @compile {:no_warn_undefined, Cluster.Strategy}

  @type mfa_tuple :: {module(), atom(), [term()]}
  @type result :: :ok | {:error, [{node(), term()}]}

  @doc "Whether libcluster's `Cluster.Strategy` helpers are loaded in this VM."
  @spec libcluster?() :: boolean()
  def libcluster? do
    Code.ensure_loaded?(Cluster.Strategy) and
      function_exported?(Cluster.Strategy, :connect_nodes, 4) and
      function_exported?(Cluster.Strategy, :disconnect_nodes, 4)
  end

  @doc """
  Connects to every node of `nodes` not yet in `list_nodes` (and not this
  node). Returns `:ok` or `{:error, [{node, false | :ignored}]}`.
  """
  @spec connect_nodes(atom(), mfa_tuple(), mfa_tuple(), [node()]) :: result()
  def connect_nodes(topology, connect, list_nodes, nodes) do
    if libcluster?(),
      do: Cluster.Strategy.connect_nodes(topology, connect, list_nodes, nodes),
      else: fallback_connect(topology, connect, list_nodes, nodes)
  end

  @doc """
  Disconnects every node of `nodes` that is in `list_nodes` (except this
  node). Returns `:ok` or `{:error, [{node, reason}]}`.
  """
  @spec disconnect_nodes(atom(), mfa_tuple(), mfa_tuple(), [node()]) :: result()
  def disconnect_nodes(topology, disconnect, list_nodes, nodes) do
    if libcluster?(),
      do: Cluster.Strategy.disconnect_nodes(topology, disconnect, list_nodes, nodes),
      else: fallback_disconnect(topology, disconnect, list_nodes, nodes)
  end

  @doc """
  Asks `node` to leave the cluster by itself, without setting up a
  connection to it.

  Disconnecting a node from one side makes OTP's `global` (with
  `prevent_overlapping_partitions`, the default since OTP 25) cut the
  nodes that report the loss apart from the nodes still connected to it:
  healthy nodes would see each other go down. A node that leaves with
  `:global.disconnect/0` is removed alone. This sends the request to the
  node's `rex` server, which every node runs whether or not it runs this
  strategy. Returns `:ok`, or `:noconnect` when the node is not connected.
  """
  @spec request_leave(node()) :: :ok | :noconnect
  def request_leave(node) do
    # rex's cast form, as rpc:cast/4 sends it; `user` makes the spawned
    # process use the node's own group leader.
    message = {:"$gen_cast", {:cast, :global, :disconnect, [], :user}}

    case :erlang.send({:rex, node}, message, [:noconnect]) do
      :noconnect -> :noconnect
      _ -> :ok
    end
  end

  @doc """
  Makes this node leave the cluster so that only this node is removed
  from it (`:global.disconnect/0`, OTP 25.1+), then disconnects from any
  of `nodes` still connected: a connection `global` had not synced yet is
  not one it knows to drop. Returns the nodes it disconnected from.
  """
  @spec leave_cluster([node()]) :: [node()]
  def leave_cluster(nodes) do
    left = if function_exported?(:global, :disconnect, 0), do: :global.disconnect(), else: []
    rest = for node <- Node.list(), node in nodes or left == [], Node.disconnect(node), do: node
    Enum.uniq(left ++ rest)
  end

  @doc false
  def fallback_connect(topology, {_, _, _} = connect, {_, _, _} = list_nodes, nodes) do
    current = apply_mfa(list_nodes, [])
    self = Node.self()

    nodes
    |> Enum.reject(&(&1 == self or &1 in current))
    |> each_node(topology, :connect_node, connect, &connect_outcome/2)
  end

  @doc false
  def fallback_disconnect(topology, {_, _, _} = disconnect, {_, _, _} = list_nodes, nodes) do
    current = apply_mfa(list_nodes, [])
    self = Node.self()

    nodes
    |> Enum.filter(&(&1 != self and &1 in current))
    |> each_node(topology, :disconnect_node, disconnect, &disconnect_outcome/2)
  end

  # One node after another, as libcluster does: apply the MFA, emit the
  # telemetry event, log, and collect what counts as a failure.
  defp each_node(nodes, topology, kind, mfa, outcome) do
    nodes
    |> Enum.reduce([], fn node, bad ->
      {result, measurements} = timed_apply(mfa, node)
      {event, level, message, failure} = outcome.(node, result)
      metadata = %{node: node, topology: topology}

      case event do
        :ok ->
          Telemetry.execute([:libcluster, kind, :ok], measurements, metadata)

        {:error, reason} ->
          Telemetry.execute(
            [:libcluster, kind, :error],
            measurements,
            Map.put(metadata, :reason, reason)
          )
      end

      if level == :info, do: Log.info(topology, message), else: Log.warn(topology, message)

      case failure do
        :none -> bad
        {:failed, value} -> [{node, value} | bad]
      end
    end)
    |> result()
  end

  # {telemetry outcome, log level, log line, failure to report} per result,
  # in libcluster's words.
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

  # libcluster's telemetry measures each connect or disconnect in native time units.
  defp timed_apply(mfa, node) do
    started = System.monotonic_time()
    result = apply_mfa(mfa, [node])
    {result, %{duration: System.monotonic_time() - started}}
  end

  defp result([]), do: :ok
  defp result(bad), do: {:error, Enum.reverse(bad)}

  defp apply_mfa({module, fun, args}, extra) do
    arity = length(args) + length(extra)

    # libcluster raises on an MFA that is not exported with the right arity; so do we.
    unless Code.ensure_loaded?(module) and function_exported?(module, fun, arity) do
      raise ArgumentError, "#{inspect(module)}.#{fun}/#{arity} is undefined or private"
    end

    apply(module, fun, args ++ extra)
  end
end
