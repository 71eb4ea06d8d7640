defmodule LibclusterDroplet.Removal do
  @leave_grace 5_000
  @max_wait 60_000
  @warn_after 2

  @moduledoc """
  Pure decisions on removing nodes no longer selected without costing
  healthy nodes their connections.

  Disconnecting a node from one side never happens here. With OTP's
  `prevent_overlapping_partitions` (on by default since OTP 25) the node
  cut off reports the lost connection to every node it still sees, and
  they drop their connections to the node that cut it off: a healthy node
  would lose the cluster. So a node no longer wanted that is connected
  through distribution is asked to leave by itself (`:global.disconnect/0`
  on it, see `LibclusterDroplet.Membership.request_leave/1`), which removes
  it alone. It is asked again while it stays connected, after
  #{@leave_grace} ms, then twice as long each time up to #{div(@max_wait, 1000)} s (while a
  cluster settles, `global` may connect a node that just left back to the
  others). After #{@warn_after} requests the strategy warns, once: such a node runs
  an OTP without `:global.disconnect/0` (before 25.1) or does not answer.

  A node that only the `list_nodes` MFA sees (a hidden node, or a custom
  MFA) is no member of `global`'s cluster, so it is disconnected with the
  `disconnect` MFA, retried until that succeeds.

  The state is a map from node to `%{since: ms, asked: n}`: when it was
  last asked (or its disconnect failed) and how many times it was asked.
  """

  @typedoc "Nodes being removed."
  @type removing :: %{node() => %{since: integer(), asked: non_neg_integer()}}

  @typedoc "What the strategy must do."
  @type action :: {:ask_to_leave, node()} | {:disconnect, node()} | {:still_connected, node()}

  @doc "How long a node asked to leave may stay connected before it is asked again."
  @spec leave_grace() :: pos_integer()
  def leave_grace, do: @leave_grace

  @doc "After how many requests a node still connected is warned about."
  @spec warn_after() :: pos_integer()
  def warn_after, do: @warn_after

  @doc """
  Starts removing the `stale` nodes: those `visible` through distribution
  are asked to leave; those only in `connected` (the `list_nodes` MFA's
  view) are disconnected; the rest are gone already. Nodes in `wanted`
  stop being removed.

      iex> alias LibclusterDroplet.Removal
      iex> {actions, removing} = Removal.start(%{}, [:a, :b, :c], MapSet.new([:a]), MapSet.new([:a, :b]), MapSet.new(), 0)
      iex> actions
      [{:ask_to_leave, :a}, {:disconnect, :b}]
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
        ) :: {[action()], removing()}
  def start(removing, stale, visible, connected, wanted, now) do
    removing = Map.reject(removing, fn {node, _} -> MapSet.member?(wanted, node) end)

    {actions, removing} =
      stale
      |> Enum.reject(&Map.has_key?(removing, &1))
      |> Enum.reduce({[], removing}, fn node, {actions, removing} ->
        cond do
          MapSet.member?(visible, node) ->
            {[{:ask_to_leave, node} | actions], Map.put(removing, node, %{since: now, asked: 1})}

          MapSet.member?(connected, node) ->
            {[{:disconnect, node} | actions], Map.put(removing, node, %{since: now, asked: 0})}

          true ->
            {actions, removing}
        end
      end)

    {Enum.reverse(actions), removing}
  end

  @doc """
  At a check: nodes neither `visible` nor `connected` are done; a node
  asked to leave and still visible is asked again once its wait is over
  (and, at its #{@warn_after}th request, reported once); a node only
  `connected` is disconnected again after `retry` ms.

      iex> alias LibclusterDroplet.Removal
      iex> removing = %{a: %{since: 0, asked: 1}, b: %{since: 4_000, asked: 1}, c: %{since: 0, asked: 1}}
      iex> Removal.due(removing, MapSet.new([:a, :b]), MapSet.new([:a, :b]), 5_000, 60_000)
      {[{:ask_to_leave, :a}, {:still_connected, :a}], %{a: %{since: 5_000, asked: 2}, b: %{since: 4_000, asked: 1}}}
  """
  @spec due(removing(), MapSet.t(node()), MapSet.t(node()), integer(), pos_integer()) ::
          {[action()], removing()}
  def due(removing, visible, connected, now, retry) do
    removing
    |> Enum.filter(fn {node, _} ->
      MapSet.member?(visible, node) or MapSet.member?(connected, node)
    end)
    |> Enum.sort()
    |> Enum.flat_map_reduce(%{}, fn {node, info}, acc ->
      cond do
        now < info.since + wait(info, retry) ->
          {[], Map.put(acc, node, info)}

        MapSet.member?(visible, node) ->
          asked = info.asked + 1
          warn = if asked == @warn_after, do: [{:still_connected, node}], else: []
          {[{:ask_to_leave, node} | warn], Map.put(acc, node, %{since: now, asked: asked})}

        true ->
          {[{:disconnect, node}], Map.put(acc, node, %{info | since: now})}
      end
    end)
  end

  @doc """
  Records a disconnect's outcome: a success ends the node's removal; a
  failure keeps it, to be retried.
  """
  @spec disconnected(removing(), node(), :ok | :error) :: removing()
  def disconnected(removing, node, :ok), do: Map.delete(removing, node)
  def disconnected(removing, _node, :error), do: removing

  @doc """
  When the next check is due, in ms from `now`, or `nil` when nothing is
  being removed.
  """
  @spec next_check(removing(), integer(), pos_integer()) :: non_neg_integer() | nil
  def next_check(removing, _now, _retry) when map_size(removing) == 0, do: nil

  def next_check(removing, now, retry) do
    removing |> Map.values() |> Enum.map(&max(&1.since + wait(&1, retry) - now, 0)) |> Enum.min()
  end

  # A node asked n times waits leave_grace * 2^(n-1), at most @max_wait; a
  # disconnect is retried after `retry`.
  defp wait(%{asked: 0}, retry), do: retry

  defp wait(%{asked: asked}, _retry),
    do: min(@leave_grace * Integer.pow(2, min(asked - 1, 8)), @max_wait)
end
