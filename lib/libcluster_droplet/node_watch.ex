defmodule LibclusterDroplet.NodeWatch do
  @moduledoc false
  # What a strategy remembers per node of its last view, for explain and
  # its once-only log lines: each node's last health check and failures in
  # a row (reported once at @warn_after, and once when it passes again),
  # since when each managed node is connected, and when a streak of failed
  # connects deserves a line. Pure, and bounded by the view: keep/2.

  @warn_after 3

  defstruct probes: %{}, since: %{}

  @type probe :: LibclusterDroplet.Explain.probe()
  @type event :: {:failing | :recovered, node(), probe()}
  @type t :: %__MODULE__{probes: %{node() => probe()}, since: %{node() => integer()}}

  def warn_after, do: @warn_after

  @doc """
  Records a batch of checks of `candidates` (`{node, address}`, in the
  order of the NIF's `results`) at `at` (Unix ms), taking `batch_ms`, with
  a check `timeout`. Returns the watch and the events to log.

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
  @spec probed(t(), [{node(), String.t()}], list(), integer(), number(), pos_integer()) ::
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

  # The managed nodes `connected` now, each since it was first seen (`at`
  # for a new one); the others are forgotten.
  def connected(%__MODULE__{} = watch, connected, at),
    do: %{watch | since: Map.new(connected, &{&1, Map.get(watch.since, &1, at)})}

  # Forgets every node not in `nodes` (the view just applied).
  def keep(%__MODULE__{} = watch, nodes) do
    kept? = fn {node, _} -> MapSet.member?(nodes, node) end
    %{watch | probes: Map.filter(watch.probes, kept?), since: Map.filter(watch.since, kept?)}
  end

  @doc """
  Whether a connect outcome deserves a log line, given the failures in a
  row before it: `:failing` at the #{@warn_after}th, `:recovered` after that many.

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
