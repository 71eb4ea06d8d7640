defmodule LibclusterDroplet.Removal do
  @leave_grace 5_000
  @asks 2

  @moduledoc false
  # Pure decisions on removing managed nodes without costing healthy nodes
  # their connections.
  #
  # Disconnecting a node from one side makes OTP's `global`
  # (`prevent_overlapping_partitions`, on by default since OTP 25) cut the
  # nodes that report the loss apart from the nodes still connected to it.
  # So a node no longer wanted that is connected through distribution is
  # first asked to leave by itself (`:global.disconnect/0` on it, see
  # `LibclusterDroplet.Membership.request_leave/1`), which removes it alone.
  # A node still connected #{@leave_grace} ms later is asked once more (while
  # a cluster is still settling, `global` may connect a node that just left
  # back to the others, and it then leaves again); only a node still
  # connected after #{@asks} requests, or one that only the `list_nodes` MFA
  # sees (a hidden node, a custom MFA), is disconnected with the
  # `disconnect` MFA. A disconnect that fails is retried at the next check
  # until it succeeds.
  #
  # The state is a map from node to `%{since: ms, asked: non_neg_integer}`,
  # the number of times it was asked to leave.

  @typedoc "Nodes being removed: since when (ms) and how many times they were asked to leave."
  @type removing :: %{node() => %{since: integer(), asked: non_neg_integer()}}

  @typedoc "What the strategy must do."
  @type action :: {:ask_to_leave, node()} | {:disconnect, node(), asked :: boolean()}

  @doc "How long a node asked to leave may stay connected before it is asked again or disconnected."
  @spec leave_grace() :: pos_integer()
  def leave_grace, do: @leave_grace

  @doc "How many times a node is asked to leave before it is disconnected."
  @spec asks() :: pos_integer()
  def asks, do: @asks

  @doc """
  Starts removing the `stale` nodes: those `visible` through distribution
  are asked to leave; those only in `connected` (the `list_nodes` MFA's
  view) are disconnected at once; the rest are already gone. Nodes in
  `wanted` stop being removed.

      iex> alias LibclusterDroplet.Removal
      iex> {actions, removing} = Removal.start(%{}, [:a, :b, :c], MapSet.new([:a]), MapSet.new([:a, :b]), MapSet.new(), 0)
      iex> actions
      [{:ask_to_leave, :a}, {:disconnect, :b, false}]
      iex> Map.keys(removing)
      [:a, :b]
  """
  @spec start(
          removing(),
          Enumerable.t(),
          MapSet.t(node()),
          MapSet.t(node()),
          MapSet.t(node()),
          integer()
        ) ::
          {[action()], removing()}
  def start(removing, stale, visible, connected, wanted, now) do
    removing = Map.reject(removing, fn {node, _} -> MapSet.member?(wanted, node) end)

    {actions, removing} =
      Enum.reduce(stale, {[], removing}, fn node, {actions, removing} ->
        cond do
          MapSet.member?(visible, node) ->
            {[{:ask_to_leave, node} | actions], Map.put(removing, node, %{since: now, asked: 1})}

          MapSet.member?(connected, node) ->
            {[{:disconnect, node, false} | actions],
             Map.put(removing, node, %{since: now, asked: 0})}

          true ->
            {actions, removing}
        end
      end)

    {Enum.reverse(actions), removing}
  end

  @doc """
  At a check: nodes no longer `connected` are done; nodes asked to leave
  and still connected past the grace are asked again, up to #{@asks} times,
  then disconnected; nodes whose disconnect failed are disconnected again.

      iex> alias LibclusterDroplet.Removal
      iex> removing = %{a: %{since: 0, asked: 2}, b: %{since: 0, asked: 1}, c: %{since: 0, asked: 1}, d: %{since: 4_000, asked: 1}}
      iex> {actions, removing} = Removal.due(removing, MapSet.new([:a, :c, :d]), 5_000)
      iex> {actions, removing}
      {[{:disconnect, :a, true}, {:ask_to_leave, :c}],
       %{a: %{since: 0, asked: 2}, c: %{since: 5_000, asked: 2}, d: %{since: 4_000, asked: 1}}}
  """
  @spec due(removing(), MapSet.t(node()), integer()) :: {[action()], removing()}
  def due(removing, connected, now) do
    removing
    |> Enum.filter(fn {node, _} -> MapSet.member?(connected, node) end)
    |> Enum.sort()
    |> Enum.reduce({[], %{}}, fn {node, info}, {actions, removing} ->
      cond do
        info.asked > 0 and now - info.since < @leave_grace ->
          {actions, Map.put(removing, node, info)}

        info.asked > 0 and info.asked < @asks ->
          {[{:ask_to_leave, node} | actions],
           Map.put(removing, node, %{since: now, asked: info.asked + 1})}

        true ->
          {[{:disconnect, node, info.asked > 0} | actions], Map.put(removing, node, info)}
      end
    end)
    |> then(fn {actions, removing} -> {Enum.reverse(actions), removing} end)
  end

  @doc """
  Records a disconnect's outcome: a success ends the node's removal; a
  failure keeps it, to be retried at the next check.
  """
  @spec disconnected(removing(), node(), :ok | :error) :: removing()
  def disconnected(removing, node, :ok), do: Map.delete(removing, node)

  def disconnected(removing, node, :error) when is_map_key(removing, node),
    do: Map.update!(removing, node, &%{&1 | asked: 0, since: 0})

  def disconnected(removing, _node, :error), do: removing

  @doc """
  When the next check is due, in ms from `now`, or `nil` when nothing is
  being removed. Nodes asked to leave are checked when their grace ends;
  failed disconnects are retried after `retry` ms.
  """
  @spec next_check(removing(), integer(), pos_integer()) :: non_neg_integer() | nil
  def next_check(removing, _now, _retry) when map_size(removing) == 0, do: nil

  def next_check(removing, now, retry) do
    removing
    |> Map.values()
    |> Enum.map(fn
      %{asked: 0} -> retry
      %{since: since} -> max(since + @leave_grace - now, 0)
    end)
    |> Enum.min()
  end
end
