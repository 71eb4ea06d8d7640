defmodule LibclusterDroplet.HealthCheck do
  @moduledoc """
  The `:health_check` option: a check every selected node must pass before
  this node connects to it, run on a NIF thread for all of a view's nodes
  at once.

  A kind of check is a module implementing this behaviour, named in
  `@kinds`; the option is `{kind, opts}`, such as `{:tcp, port: 4000}`
  (`LibclusterDroplet.HealthCheck.TCP`). The module owns its options
  (validation, defaults), what the NIF is asked to run (`c:native/1`, one
  map whose `:kind` the Rust probe dispatches on), its timeout and its
  words in explain. Everything else (waves, watchdogs, verdicts, strikes)
  is the same for every kind, here and in `LibclusterDroplet.Plan`.
  """

  alias LibclusterDroplet.Call

  @typedoc "The `:health_check` option, validated: `{kind, opts}`."
  @type t :: {atom(), keyword()}

  @typedoc "A check's verdict on one node."
  @type result :: :ok | {:error, term()}

  @doc "Validates a kind's options; the message names the expected shape, never the value."
  @callback validate(opts :: term()) :: {:ok, keyword()} | {:error, String.t()}

  @doc "The check as the NIF runs it: a map with `:kind` and the kind's fields."
  @callback native(opts :: keyword()) :: map()

  @doc "How long one check may take, in ms."
  @callback timeout(opts :: keyword()) :: pos_integer()

  @doc "What is checked, in words (`\"port 4000\"`)."
  @callback describe(opts :: keyword()) :: String.t()

  @kinds [tcp: LibclusterDroplet.HealthCheck.TCP]

  # Checks pending at once, if the NIF's thread budget has them free; more
  # targets than the call gets take several waves.
  @concurrency 512

  @doc false
  # NimbleOptions' custom validator of `:health_check`.
  @spec validate(term()) :: {:ok, t() | nil} | {:error, String.t()}
  def validate(nil), do: {:ok, nil}

  def validate({kind, opts}) when is_atom(kind) and is_list(opts) do
    case @kinds[kind] do
      nil -> {:error, "unknown kind; the kinds are #{inspect(Keyword.keys(@kinds))}"}
      module -> with {:ok, opts} <- module.validate(opts), do: {:ok, {kind, opts}}
    end
  end

  def validate(_other),
    do: {:error, "expected nil or {kind, opts} such as {:tcp, port: 4000} (value not shown)"}

  defp module!({kind, _opts}), do: Keyword.fetch!(@kinds, kind)

  @doc "How long one check of `check` may take, in ms."
  @spec timeout(t()) :: pos_integer()
  def timeout({_kind, opts} = check), do: module!(check).timeout(opts)

  @doc "What `check` checks, in words."
  @spec describe(t()) :: String.t()
  def describe({_kind, opts} = check), do: module!(check).describe(opts)

  @doc """
  Starts checking `targets` (`{node, address}`), or returns `:unchecked`
  when there is no check or nobody to check. `{:ok, call, wait}` gives the
  call in flight (its `ref` is the answer's) and how long to wait for it:
  one timeout per wave of the concurrency the call was granted, plus
  `grace` ms.
  """
  @spec start([{node(), String.t()}], t() | nil, non_neg_integer()) ::
          :unchecked | {:ok, Call.t(), pos_integer()} | {:error, term()}
  def start([_ | _] = targets, {_kind, opts} = check, grace) do
    addresses = Enum.map(targets, &elem(&1, 1))
    native = module!(check).native(opts)

    with {:ok, call} <- LibclusterDroplet.start_check(addresses, native, @concurrency),
         do: {:ok, call, timeout(check) * Call.waves(call, length(addresses)) + grace}
  end

  def start(_targets, _check, _grace), do: :unchecked

  @doc """
  Runs `check` on `targets` and waits for the results: what
  `mix libcluster_droplet.explain` does. `{:ok, results, batch_ms}`, the
  results as the NIF gives them, in target order.
  """
  @spec run([{node(), String.t()}], t() | nil) ::
          {:ok, [{String.t(), term()}], number()} | :unchecked | {:error, term()}
  def run(targets, check) do
    started = System.monotonic_time(:microsecond)

    with {:ok, call, wait} <- start(targets, check, 5_000),
         results when is_list(results) <- LibclusterDroplet.await_check(call, wait),
         do: {:ok, results, (System.monotonic_time(:microsecond) - started) / 1000}
  end

  @doc """
  The verdict per node from the NIF's results, which come in target order.

      iex> targets = [{:"a@h", "10.0.0.2"}, {:"b@h", "10.0.0.3"}]
      iex> LibclusterDroplet.HealthCheck.results(targets, [{"10.0.0.2", {:ok, 120}}, {"10.0.0.3", {:error, :refused}}])
      %{"a@h": :ok, "b@h": {:error, :refused}}
  """
  @spec results([{node(), String.t()}], [{String.t(), term()}]) :: %{node() => result()}
  def results(targets, results) do
    for {{node, _address}, {_, result}} <- Enum.zip(targets, results), into: %{} do
      case result do
        {:ok, _us} -> {node, :ok}
        {:error, _} = error -> {node, error}
      end
    end
  end
end
