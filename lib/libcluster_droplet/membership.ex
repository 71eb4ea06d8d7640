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

  @doc false
  def fallback_connect(topology, {_, _, _} = connect, {_, _, _} = list_nodes, nodes) do
    current = apply_mfa(list_nodes, [])
    self = Node.self()

    nodes
    |> Enum.reject(&(&1 == self or &1 in current))
    |> Enum.reduce([], fn node, bad ->
      {result, measurements} = timed_apply(connect, node)
      metadata = %{node: node, topology: topology}

      case result do
        true ->
          Telemetry.execute([:libcluster, :connect_node, :ok], measurements, metadata)
          Log.info(topology, "connected to #{inspect(node)}")
          bad

        false ->
          Telemetry.execute(
            [:libcluster, :connect_node, :error],
            measurements,
            Map.put(metadata, :reason, :unreachable)
          )

          Log.warn(topology, "unable to connect to #{inspect(node)}")
          [{node, false} | bad]

        :ignored ->
          Telemetry.execute(
            [:libcluster, :connect_node, :error],
            measurements,
            Map.put(metadata, :reason, :not_part_of_network)
          )

          Log.warn(topology, "unable to connect to #{inspect(node)}: not part of network")
          [{node, :ignored} | bad]
      end
    end)
    |> result()
  end

  @doc false
  def fallback_disconnect(topology, {_, _, _} = disconnect, {_, _, _} = list_nodes, nodes) do
    current = apply_mfa(list_nodes, [])
    self = Node.self()

    nodes
    |> Enum.filter(&(&1 != self and &1 in current))
    |> Enum.reduce([], fn node, bad ->
      {result, measurements} = timed_apply(disconnect, node)
      metadata = %{node: node, topology: topology}

      case result do
        true ->
          Telemetry.execute([:libcluster, :disconnect_node, :ok], measurements, metadata)
          Log.info(topology, "disconnected from #{inspect(node)}")
          bad

        false ->
          Telemetry.execute(
            [:libcluster, :disconnect_node, :error],
            measurements,
            Map.put(metadata, :reason, :already_disconnected)
          )

          Log.warn(
            topology,
            "disconnect from #{inspect(node)} failed because we're already disconnected"
          )

          bad

        :ignored ->
          Telemetry.execute(
            [:libcluster, :disconnect_node, :error],
            measurements,
            Map.put(metadata, :reason, :not_part_of_network)
          )

          Log.warn(
            topology,
            "disconnect from #{inspect(node)} failed because we're not part of the network"
          )

          bad

        reason ->
          Telemetry.execute(
            [:libcluster, :disconnect_node, :error],
            measurements,
            Map.put(metadata, :reason, inspect(reason))
          )

          Log.warn(topology, "disconnect from #{inspect(node)} failed with: #{inspect(reason)}")
          [{node, reason} | bad]
      end
    end)
    |> result()
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
