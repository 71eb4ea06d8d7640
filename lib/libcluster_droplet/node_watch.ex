defmodule LibclusterDroplet.NodeWatch do
  @warn_after 3

  @moduledoc """
  What a strategy remembers about each node of its last view, for
  `Cluster.Strategy.Droplet.explain/2` and for its once-only log lines.

    * **Health probes**: each node's last probe (its result, how long it
      took, when) and how many failed in a row. A node that fails
      #{@warn_after} in a row is reported once (`{:failing, node, probe}`),
      and once more when it passes again (`{:recovered, node, probe}`), never
      on every poll.
    * **Connected since**: when the strategy first saw each managed node
      connected.
    * **Connect streaks**: `connect_event/2` says when a node's consecutive
      connect failures (counted by the connector, `lib/libcluster_droplet/connector.ex`) deserve a
      warning, and when its recovery deserves an info line.

  Pure. What it holds is bounded by the nodes of the last view: `keep/2`
  forgets every other node.
  """

  defstruct probes: %{}, since: %{}

  @typedoc """
  A node's last health probe: `result`, `took_ms` (exact for a success,
  the probe's timeout for `:timeout`, otherwise an upper bound: the whole
  batch's time, `exact?: false`), `at` (Unix ms), `failed` (failed probes
  in a row) and `warned?` (the failure was logged).
  """
  @type probe :: %{
          result: :ok | {:error, term()},
          took_ms: number(),
          exact?: boolean(),
          at: integer(),
          failed: non_neg_integer(),
          warned?: boolean()
        }

  @type event :: {:failing | :recovered, node(), probe()}

  @type t :: %__MODULE__{
          probes: %{node() => probe()},
          since: %{node() => integer()}
        }

  @doc "How many failures in a row (probes, or connects) make a warning."
  @spec warn_after() :: pos_integer()
  def warn_after, do: @warn_after

  @doc """
  Records a batch of probes. `candidates` are `{node, address}` in the
  order the probes ran, `results` the NIF's `{address, result}` in the same
  order; `at` is the Unix time in ms, `batch_ms` the batch's duration and
  `timeout` the probe timeout, in ms. Returns the watch and the events to log.

      iex> alias LibclusterDroplet.NodeWatch
      iex> probe = fn w -> NodeWatch.probed(w, [{:"a@h", "10.0.0.2"}], [{"10.0.0.2", {:error, :refused}}], 0, 3, 500) end
      iex> {w, []} = probe.(%NodeWatch{})
      iex> {w, []} = probe.(w)
      iex> {w, [{:failing, :"a@h", %{failed: 3}}]} = probe.(w)
      iex> {_w, []} = probe.(w)
      iex> {w, []} = probe.(w)
      iex> {_w, [{:recovered, :"a@h", %{failed: 0}}]} =
      ...>   NodeWatch.probed(w, [{:"a@h", "10.0.0.2"}], [{"10.0.0.2", {:ok, 250}}], 0, 3, 500)
  """
  @spec probed(
          t(),
          [{node(), String.t()}],
          [{String.t(), term()}],
          integer(),
          number(),
          pos_integer()
        ) ::
          {t(), [event()]}
  def probed(%__MODULE__{} = watch, candidates, results, at, batch_ms, timeout) do
    {probes, events} =
      candidates
      |> Enum.zip(results)
      |> Enum.reduce({watch.probes, []}, fn {{node, _address}, {_, result}}, {probes, events} ->
        previous = Map.get(probes, node, %{failed: 0, warned?: false})
        probe = probe(result, previous, at, batch_ms, timeout)
        {Map.put(probes, node, probe), event(node, probe, previous) ++ events}
      end)

    {%{watch | probes: probes}, Enum.reverse(events)}
  end

  defp probe({:ok, us}, _previous, at, _batch_ms, _timeout),
    do: %{result: :ok, took_ms: us / 1000, exact?: true, at: at, failed: 0, warned?: false}

  defp probe({:error, reason}, previous, at, batch_ms, timeout) do
    # A timeout took exactly the timeout; any other error came back sooner,
    # within the batch's time (the NIF reports no time for failures).
    {took, exact?} = if reason == :timeout, do: {timeout, true}, else: {batch_ms, false}
    failed = previous.failed + 1

    %{
      result: {:error, reason},
      took_ms: took,
      exact?: exact?,
      at: at,
      failed: failed,
      warned?: previous.warned? or failed >= @warn_after
    }
  end

  defp event(node, %{result: {:error, _}, failed: @warn_after} = probe, %{warned?: false}),
    do: [{:failing, node, probe}]

  defp event(node, %{result: :ok} = probe, %{warned?: true}), do: [{:recovered, node, probe}]
  defp event(_node, _probe, _previous), do: []

  @doc """
  Notes which managed nodes are connected now (`connected`); a node seen
  for the first time is connected since `at` (Unix ms). Nodes not
  connected any more are forgotten.
  """
  @spec connected(t(), MapSet.t(node()) | [node()], integer()) :: t()
  def connected(%__MODULE__{} = watch, connected, at) do
    since = Map.new(connected, &{&1, Map.get(watch.since, &1, at)})
    %{watch | since: since}
  end

  @doc "Forgets every node not in `nodes` (the candidates of the view just applied)."
  @spec keep(t(), MapSet.t(node())) :: t()
  def keep(%__MODULE__{} = watch, nodes) do
    %{
      watch
      | probes: Map.filter(watch.probes, fn {node, _} -> MapSet.member?(nodes, node) end),
        since: Map.filter(watch.since, fn {node, _} -> MapSet.member?(nodes, node) end)
    }
  end

  @doc """
  Whether a connect outcome is worth a log line: `:failing` when a node has
  just failed #{@warn_after} connects in a row (`count`, the new count), `:recovered`
  when a node that had failed that often connects, `nil` otherwise.

      iex> LibclusterDroplet.NodeWatch.connect_event(2, {:error, 3})
      :failing
      iex> LibclusterDroplet.NodeWatch.connect_event(5, {:error, 6})
      nil
      iex> LibclusterDroplet.NodeWatch.connect_event(5, :ok)
      :recovered
      iex> LibclusterDroplet.NodeWatch.connect_event(1, :ok)
      nil
  """
  @spec connect_event(non_neg_integer(), :ok | {:error, pos_integer()}) ::
          :failing | :recovered | nil
  def connect_event(_previous, {:error, @warn_after}), do: :failing
  def connect_event(previous, :ok) when previous >= @warn_after, do: :recovered
  def connect_event(_previous, _outcome), do: nil
end
