defmodule LibclusterDroplet.Removal do
  @moduledoc false
  # Removing nodes no longer selected without costing healthy nodes their
  # connections (guides/how-it-works.md, "Removal"): a node connected
  # through distribution is asked to leave by itself, again while it stays
  # (after @leave_grace ms, doubling up to @max_wait), with one warning at
  # its @warn_after-th request; a node only the `list_nodes` MFA sees is
  # disconnected with the `disconnect` MFA, retried until that succeeds.
  # State: node => %{since: ms of the last request, asked: requests}.

  @leave_grace 5_000
  @max_wait 60_000
  @warn_after 2

  @type removing :: %{node() => %{since: integer(), asked: non_neg_integer()}}
  @type action :: {:ask_to_leave, node()} | {:disconnect, node()} | {:still_connected, node()}

  def leave_grace, do: @leave_grace
  def warn_after, do: @warn_after

  @doc """
  Starts removing `stale` nodes: those `visible` are asked to leave, those
  only `connected` are disconnected; nodes `wanted` again stop being removed.

      iex> alias LibclusterDroplet.Removal
      iex> {actions, removing} = Removal.start(%{}, [:a, :b, :c], MapSet.new([:a]), MapSet.new([:a, :b]), MapSet.new(), 0)
      iex> actions
      [{:ask_to_leave, :a}, {:disconnect, :b}]
      iex> Map.keys(removing)
      [:a, :b]
  """
  @spec start(removing(), Enumerable.t(), MapSet.t(), MapSet.t(), MapSet.t(), integer()) ::
          {[action()], removing()}
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
  The actions due at `now`: nodes gone are done, a visible node is asked
  again once its wait is over, a node only `connected` is disconnected
  again after `retry` ms.

      iex> alias LibclusterDroplet.Removal
      iex> removing = %{a: %{since: 0, asked: 1}, b: %{since: 4_000, asked: 1}, c: %{since: 0, asked: 1}}
      iex> Removal.due(removing, MapSet.new([:a, :b]), MapSet.new([:a, :b]), 5_000, 60_000)
      {[{:ask_to_leave, :a}, {:still_connected, :a}], %{a: %{since: 5_000, asked: 2}, b: %{since: 4_000, asked: 1}}}
  """
  @spec due(removing(), MapSet.t(), MapSet.t(), integer(), pos_integer()) ::
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

  # A disconnect that succeeded ends the node's removal; a failed one is retried.
  def disconnected(removing, node, :ok), do: Map.delete(removing, node)
  def disconnected(removing, _node, :error), do: removing

  # When the next check is due, in ms from `now`; nil when nothing is removed.
  def next_check(removing, _now, _retry) when map_size(removing) == 0, do: nil

  def next_check(removing, now, retry) do
    removing |> Map.values() |> Enum.map(&max(&1.since + wait(&1, retry) - now, 0)) |> Enum.min()
  end

  defp wait(%{asked: 0}, retry), do: retry

  defp wait(%{asked: asked}, _retry),
    do: min(@leave_grace * Integer.pow(2, min(asked - 1, 8)), @max_wait)
end
