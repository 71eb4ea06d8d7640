defmodule LibclusterDroplet.Connector do
  @max_in_flight 64
  @max_retries_in_flight 32

  @moduledoc false
  # Bookkeeping of the connects a strategy runs off its own process.
  #
  # A connect to an address that drops packets blocks its caller for
  # `net_setuptime` (7 s by default), so the strategy never connects itself:
  # each connect runs in a task of its own (one `connect_nodes/4` call per
  # node, so libcluster's log lines and telemetry stay) and answers with a
  # message. This module decides which wanted nodes to start and keeps their
  # state; it has no side effects.
  #
  #   * At most #{@max_in_flight} connects are in flight at once. Nodes never
  #     tried before (or whose last connect succeeded) go first; of the
  #     connects in flight, at most #{@max_retries_in_flight} retry a node whose last connect failed,
  #     so fresh nodes always find room even while many unreachable droplets
  #     are listed.
  #   * A node whose connect failed is retried on its own backoff
  #     (`LibclusterDroplet.Schedule.backoff/3` of its consecutive failures),
  #     not on every poll; a success forgets its failures.
  #   * A node no longer wanted is forgotten, and its connect in flight is
  #     handed back to be cancelled.

  defstruct in_flight: %{}, failures: %{}

  @typedoc "A connect's outcome, as the task reports it."
  @type outcome :: :ok | {:error, term()}

  @type failure :: %{count: pos_integer(), retry_at: integer(), reason: term()}

  @type t :: %__MODULE__{
          in_flight: %{reference() => node()},
          failures: %{node() => failure()}
        }

  @doc "The bound on connects in flight."
  @spec max_in_flight() :: pos_integer()
  def max_in_flight, do: @max_in_flight

  @doc """
  The nodes to start connecting now: `wanted` nodes that are not
  `connected`, not in flight and not waiting out a backoff, within the
  bounds, fresh nodes first, in `wanted` order.

      iex> alias LibclusterDroplet.Connector
      iex> {start, _} = Connector.next(%Connector{}, [:a, :b, :c], MapSet.new([:b]), 0)
      iex> start
      [:a, :c]
  """
  @spec next(t(), [node()], MapSet.t(node()), integer()) :: {[node()], t()}
  def next(%__MODULE__{} = connector, wanted, connected, now) do
    busy = MapSet.new(Map.values(connector.in_flight))

    {fresh, retries} =
      wanted
      |> Enum.reject(&(MapSet.member?(connected, &1) or MapSet.member?(busy, &1)))
      |> Enum.split_with(&(not Map.has_key?(connector.failures, &1)))

    due = Enum.filter(retries, &(connector.failures[&1].retry_at <= now))
    retrying = Enum.count(Map.values(connector.in_flight), &Map.has_key?(connector.failures, &1))
    room = @max_in_flight - map_size(connector.in_flight)
    # Fresh nodes first; retries get what is left, within their own bound.
    fresh = Enum.take(fresh, max(room, 0))
    retry_room = max(min(@max_retries_in_flight - retrying, room - length(fresh)), 0)
    {fresh ++ Enum.take(due, retry_room), connector}
  end

  @doc "Records that a connect of `node` started as the task `ref`."
  @spec started(t(), node(), reference()) :: t()
  def started(%__MODULE__{} = connector, node, ref),
    do: %{connector | in_flight: Map.put(connector.in_flight, ref, node)}

  @doc "Whether `ref` is a connect this connector is waiting for."
  @spec in_flight?(t(), reference()) :: boolean()
  def in_flight?(%__MODULE__{in_flight: in_flight}, ref), do: Map.has_key?(in_flight, ref)

  @doc """
  Records the outcome of the connect `ref`. `backoff` gives the wait in ms
  after a node's `n`th consecutive failure. Returns the node (nil for an
  unknown ref), the failure record when it failed (nil otherwise) and the
  connector.
  """
  @spec finished(t(), reference(), outcome(), integer(), (pos_integer() -> pos_integer())) ::
          {node() | nil, failure() | nil, t()}
  def finished(%__MODULE__{} = connector, ref, outcome, now, backoff) do
    case Map.pop(connector.in_flight, ref) do
      {nil, _} ->
        {nil, nil, connector}

      {node, in_flight} ->
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
  flight, whose task ref is returned so the caller can cancel it.

      iex> alias LibclusterDroplet.Connector
      iex> ref = make_ref()
      iex> c = Connector.started(%Connector{}, :gone, ref)
      iex> {[^ref], c} = Connector.forget(c, MapSet.new([:kept]))
      iex> c.in_flight
      %{}
  """
  @spec forget(t(), MapSet.t(node())) :: {[reference()], t()}
  def forget(%__MODULE__{} = connector, wanted) do
    {cancel, keep} =
      Enum.split_with(connector.in_flight, fn {_, n} -> not MapSet.member?(wanted, n) end)

    {Enum.map(cancel, &elem(&1, 0)),
     %{
       connector
       | in_flight: Map.new(keep),
         failures: Map.filter(connector.failures, fn {n, _} -> MapSet.member?(wanted, n) end)
     }}
  end
end
