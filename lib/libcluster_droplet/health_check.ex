defmodule LibclusterDroplet.HealthCheck do
  @moduledoc false
  # The `:health_check` of a view's candidates: one parallel TCP probe of
  # every candidate's address on a NIF thread (see `LibclusterDroplet.probe/3`),
  # turned into a verdict per node for `LibclusterDroplet.Plan.decide/5`.

  alias LibclusterDroplet.Call
  alias LibclusterDroplet.Plan.Selection

  # Probes pending at once, if the NIF's thread budget has them free; more
  # candidates than the call gets take several waves.
  @concurrency 512

  @doc """
  Starts probing `selection`'s candidates, or returns `:unchecked` when no
  health check is configured or there is nobody to check. `{:ok, call,
  wait}` gives the call in flight (its `ref` is the answer's) and how long
  to wait for it before giving up: the probes' own timeouts, one per wave
  of the concurrency the call was granted, plus `grace` ms.
  """
  @spec start(
          Selection.t(),
          Cluster.Strategy.Droplet.Config.health_check() | nil,
          non_neg_integer()
        ) ::
          :unchecked | {:ok, Call.t(), pos_integer()} | {:error, term()}
  def start(%Selection{candidates: candidates}, {:tcp, port: port, timeout: timeout}, grace)
      when candidates != [] do
    addresses = Enum.map(candidates, &elem(&1, 1))

    case LibclusterDroplet.start_probe(addresses, port,
           timeout: timeout,
           concurrency: @concurrency
         ) do
      {:ok, call} -> {:ok, call, timeout * Call.waves(call, length(addresses)) + grace}
      {:error, _} = error -> error
    end
  end

  def start(%Selection{}, _health_check, _grace), do: :unchecked

  @doc """
  The verdict per node from the NIF's results, which come in candidate order.

      iex> s = %LibclusterDroplet.Plan.Selection{candidates: [{:"a@h", "10.0.0.2"}, {:"b@h", "10.0.0.3"}]}
      iex> LibclusterDroplet.HealthCheck.verdicts(s, [{"10.0.0.2", {:ok, 120}}, {"10.0.0.3", {:error, :refused}}])
      %{"a@h": :ok, "b@h": {:error, :refused}}
  """
  @spec verdicts(Selection.t(), [{String.t(), LibclusterDroplet.probe_result()}]) ::
          %{node() => LibclusterDroplet.Plan.health()}
  def verdicts(%Selection{candidates: candidates}, results) do
    for {{node, _address}, {_, result}} <- Enum.zip(candidates, results), into: %{} do
      case result do
        {:ok, _us} -> {node, :ok}
        {:error, _} = error -> {node, error}
      end
    end
  end
end
