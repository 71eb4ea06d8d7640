defmodule LibclusterDroplet.Connector do
  @moduledoc false
  # Bookkeeping of the connects a strategy runs in tasks (a connect to a
  # black hole blocks for net_setuptime): which wanted nodes to start, at
  # most @max_in_flight at once and of those at most @max_retries_in_flight
  # retries, so fresh nodes always find room; each failed node's backoff;
  # deadlines. Pure; LibclusterDroplet.Members runs the tasks.

  @max_in_flight 64
  @max_retries_in_flight 32

  defstruct in_flight: %{}, failures: %{}

  @type outcome :: :ok | {:error, term()}
  @type failure :: %{count: pos_integer(), retry_at: integer(), reason: term()}
  @type t :: %__MODULE__{
          in_flight: %{reference() => %{node: node(), pid: pid(), deadline: integer()}},
          failures: %{node() => failure()}
        }

  def max_in_flight, do: @max_in_flight

  @doc """
  The `wanted` nodes to start connecting now: not `connected`, not in
  flight, not waiting out a backoff, within the bounds, fresh nodes first.

      iex> alias LibclusterDroplet.Connector
      iex> {start, _} = Connector.next(%Connector{}, [:a, :b, :c], MapSet.new([:b]), 0)
      iex> start
      [:a, :c]
  """
  @spec next(t(), [node()], MapSet.t(node()), integer()) :: {[node()], t()}
  def next(%__MODULE__{} = connector, wanted, connected, now) do
    busy = MapSet.new(nodes(connector))

    {fresh, retries} =
      wanted
      |> Enum.reject(&(MapSet.member?(connected, &1) or MapSet.member?(busy, &1)))
      |> Enum.split_with(&(not Map.has_key?(connector.failures, &1)))

    due = Enum.filter(retries, &(connector.failures[&1].retry_at <= now))
    retrying = Enum.count(nodes(connector), &Map.has_key?(connector.failures, &1))
    room = @max_in_flight - map_size(connector.in_flight)
    fresh = Enum.take(fresh, max(room, 0))
    retry_room = max(min(@max_retries_in_flight - retrying, room - length(fresh)), 0)
    {fresh ++ Enum.take(due, retry_room), connector}
  end

  def nodes(%__MODULE__{in_flight: in_flight}), do: Enum.map(in_flight, fn {_, c} -> c.node end)

  def started(%__MODULE__{} = connector, node, ref, pid, deadline) do
    connect = %{node: node, pid: pid, deadline: deadline}
    %{connector | in_flight: Map.put(connector.in_flight, ref, connect)}
  end

  # The connects in flight past their deadline at `now`: `{ref, pid}`.
  def expired(%__MODULE__{in_flight: in_flight}, now),
    do: for({ref, %{deadline: d, pid: pid}} <- in_flight, d <= now, do: {ref, pid})

  def next_deadline(%__MODULE__{in_flight: in_flight}),
    do: in_flight |> Enum.map(fn {_, c} -> c.deadline end) |> Enum.min(fn -> nil end)

  def in_flight?(%__MODULE__{in_flight: in_flight}, ref), do: Map.has_key?(in_flight, ref)

  # Records the outcome of the connect `ref`; `backoff` gives the wait after
  # a node's nth failure in a row. Returns the node (nil for an unknown ref),
  # its failure (nil after a success) and the connector.
  @spec finished(t(), reference(), outcome(), integer(), (pos_integer() -> pos_integer())) ::
          {node() | nil, failure() | nil, t()}
  def finished(%__MODULE__{} = connector, ref, outcome, now, backoff) do
    case Map.pop(connector.in_flight, ref) do
      {nil, _} ->
        {nil, nil, connector}

      {%{node: node}, in_flight} ->
        connector = %{connector | in_flight: in_flight}

        case outcome do
          :ok ->
            {node, nil, %{connector | failures: Map.delete(connector.failures, node)}}

          {:error, reason} ->
            count = get_in(connector.failures, [node, :count]) || 0
            failure = %{count: count + 1, retry_at: now + backoff.(count + 1), reason: reason}
            {node, failure, %{connector | failures: Map.put(connector.failures, node, failure)}}
        end
    end
  end

  @doc """
  Forgets every node not in `wanted`: its failures, and its connect in
  flight, handed back as `{ref, node}` to be watched.

      iex> alias LibclusterDroplet.Connector
      iex> ref = make_ref()
      iex> c = Connector.started(%Connector{}, :gone, ref, self(), 0)
      iex> {[{^ref, :gone}], c} = Connector.forget(c, MapSet.new([:kept]))
      iex> c.in_flight
      %{}
  """
  @spec forget(t(), MapSet.t(node())) :: {[{reference(), node()}], t()}
  def forget(%__MODULE__{} = connector, wanted) do
    {cancel, keep} =
      Enum.split_with(connector.in_flight, fn {_, c} -> not MapSet.member?(wanted, c.node) end)

    failures = Map.filter(connector.failures, fn {n, _} -> MapSet.member?(wanted, n) end)
    gone = Enum.map(cancel, fn {ref, c} -> {ref, c.node} end)
    {gone, %{connector | in_flight: Map.new(keep), failures: failures}}
  end
end
