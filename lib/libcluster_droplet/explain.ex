defmodule LibclusterDroplet.Explain do
  @moduledoc """
  Why nodes do or do not connect: what `Cluster.Strategy.Droplet.explain/2`
  and `mix libcluster_droplet.explain` return and print. The troubleshooting
  guide shows a report and says what each stage, check and finding means.

  Each entry's stage is its droplet's `LibclusterDroplet.Verdict` stage, but
  that a selected node is at one of `:not_joining`, `:health_failed`,
  `:pending`, `:connecting`, `:connect_failed`, `:connected` or (offline,
  where nothing connects) `:candidate`.
  """

  alias LibclusterDroplet.Explain.{Checks, Diagnosis, Facts, Format}
  alias LibclusterDroplet.Verdict

  @live_stages ~w(not_joining health_failed pending connecting connect_failed connected
                  candidate)a

  @typedoc "Where a droplet stopped on its way to a connected node."
  @type stage ::
          Verdict.stage()
          | :not_joining
          | :health_failed
          | :pending
          | :connecting
          | :connect_failed
          | :connected
          | :candidate

  @typedoc """
  A node's last health check: `took_ms` is exact for a success or a
  timeout, an upper bound (the batch's time, `exact?: false`) otherwise;
  `at` in Unix ms; `failed`, checks failed in a row.
  """
  @type probe :: %{
          result: :ok | {:error, term()},
          took_ms: number(),
          exact?: boolean(),
          at: integer(),
          failed: non_neg_integer(),
          warned?: boolean()
        }

  @typedoc "What the network diagnosis of a node that does not connect found."
  @type finding ::
          {:cookie_mismatch, :inet.port_number()}
          | {:answers, String.t(), :inet.port_number()}
          | {:other_node, String.t(), :inet.port_number()}
          | {:not_registered, [{String.t(), :inet.port_number()}]}
          | {:dist_closed, :inet.port_number(), term()}
          | {:nothing_answers, {:inet.port_number(), term()}, {:inet.port_number(), term()} | nil}
          | {:not_distribution, :inet.port_number()}
          | {:refused, String.t()}
          | {:busy, String.t()}

  defmodule Entry do
    @moduledoc """
    One droplet of the view: its `verdict`, its `stage` and, for a selected
    node, its last check (`probe`), its failed connects in a row
    (`connect`), since when it is connected and what the diagnosis found.
    """
    defstruct [:verdict, :stage, :probe, :connect, :since, :finding]

    @type t :: %__MODULE__{
            verdict: Verdict.t(),
            stage: LibclusterDroplet.Explain.stage(),
            probe: LibclusterDroplet.Explain.probe() | nil,
            connect: %{count: pos_integer(), reason: term(), retry_at: integer()} | nil,
            since: integer() | nil,
            finding: LibclusterDroplet.Explain.finding() | nil
          }
  end

  defmodule Report do
    @moduledoc """
    An explanation: the `checks` of this node, one
    `LibclusterDroplet.Explain.Entry` per droplet in listing order, and the
    `facts` they come from. `Cluster.Strategy.Droplet.format_explanation/1`
    renders it; `inspect/1` shows a one-line summary.
    """
    defstruct [:topology, :self, :mode, :facts, checks: [], entries: []]

    @type check :: {:ok | :info | :warning, String.t()}

    @type t :: %__MODULE__{
            topology: atom(),
            self: node(),
            mode: :strategy | :offline,
            facts: LibclusterDroplet.Explain.Facts.t(),
            checks: [check()],
            entries: [LibclusterDroplet.Explain.Entry.t()]
          }

    defimpl Inspect do
      def inspect(report, _opts) do
        "#LibclusterDroplet.Explain.Report<topology: #{Kernel.inspect(report.topology)}, " <>
          "#{LibclusterDroplet.Explain.Format.summary(report)}>"
      end
    end
  end

  @doc "Every stage, in the order a droplet goes through them."
  @spec stages() :: [stage()]
  def stages, do: (Verdict.stages() -- [:selected]) ++ @live_stages

  @doc """
  Explains the view of the strategy of `topology` (its name, or its pid):
  `{:ok, report}`, printed unless `print: false`. The strategy only hands
  over what it knows, within `:timeout` (default 5,000 ms); the network
  diagnosis of the nodes that do not connect runs in the caller, with
  `:probe_timeout` (default 1,000 ms), `:max_diagnosed` (128), `:epmd_port`
  and `:dist_port`. Nothing connects.
  """
  @spec run(atom() | pid(), keyword()) ::
          {:ok, Report.t()} | {:error, :not_running | {:no_answer, timeout()}}
  def run(topology, opts \\ []) do
    result =
      with {:ok, pid} <- whereis(topology),
           {:ok, facts} <- facts(pid, Keyword.get(opts, :timeout, 5_000)) do
        # Not asked by the strategy: net_kernel may be busy, the strategy must not wait.
        facts = %{facts | longnames?: :net_kernel.longnames() == true}
        {:ok, facts |> report() |> Diagnosis.run(opts)}
      end

    if Keyword.get(opts, :print, true) do
      case result do
        {:ok, report} -> IO.puts(Format.format(report))
        {:error, reason} -> IO.puts(Format.describe_error(topology, reason))
      end
    end

    result
  end

  # A strategy makes itself findable by its topology: a persistent term per
  # topology, written when it starts (a new key costs no global scan;
  # replacing it after a restart costs one).
  @doc false
  def register(topology), do: :persistent_term.put(key(topology), self())

  @doc false
  def unregister(topology) do
    if :persistent_term.get(key(topology), nil) == self(),
      do: :persistent_term.erase(key(topology))

    :ok
  end

  defp key(topology), do: {__MODULE__, :strategy, topology}

  defp whereis(pid) when is_pid(pid), do: {:ok, pid}

  defp whereis(topology) do
    pid = :persistent_term.get(key(topology), nil)
    if is_pid(pid) and Process.alive?(pid), do: {:ok, pid}, else: {:error, :not_running}
  end

  defp facts(pid, timeout) do
    GenServer.call(pid, :explain_facts, timeout)
  catch
    :exit, {:timeout, _} -> {:error, {:no_answer, timeout}}
    :exit, _ -> {:error, :not_running}
  end

  ## The report

  @doc "The report of `facts`, before the diagnosis (`finding: nil`)."
  @spec report(Facts.t()) :: Report.t()
  def report(%Facts{} = facts) do
    %Report{
      topology: facts.topology,
      self: facts.self,
      mode: facts.mode,
      facts: facts,
      checks: facts.notes ++ Checks.checks(facts),
      entries: entries(facts)
    }
  end

  @doc """
  The entries of the view, in listing order, each at its stage.

      iex> alias LibclusterDroplet.{Explain, Pipeline}
      iex> droplets = [
      ...>   %{name: "web-1", status: :active, address: "10.0.0.2"},
      ...>   %{name: "web-2", status: :active, address: "10.0.0.3"},
      ...>   %{name: "web-3", status: :off, address: nil}
      ...> ]
      iex> {:ok, verdicts} = Pipeline.from_listing(droplets, %{node_basename: "app"}, :"app@10.0.0.2")
      iex> facts = %Explain.Facts{self: :"app@10.0.0.2", alive?: true, config: %{require_listed: true},
      ...>   view: %{source: :listing, listed_at: 0, applied_at: 0, verdicts: verdicts},
      ...>   managed: [:"app@10.0.0.3"], connected: [:"app@10.0.0.3"], since: %{:"app@10.0.0.3" => 0}}
      iex> Explain.entries(facts) |> Enum.map(&{&1.verdict.name, &1.stage})
      [{"web-1", :this_node}, {"web-2", :connected}, {"web-3", :not_active}]
  """
  @spec entries(Facts.t()) :: [Entry.t()]
  def entries(%Facts{view: nil}), do: []

  def entries(%Facts{view: view} = facts) do
    unlisted? = Checks.unlisted?(facts)

    Enum.map(view.verdicts, fn
      %Verdict{stage: :selected} = v -> live(v, unlisted?, facts)
      v -> %Entry{verdict: v, stage: v.stage}
    end)
  end

  defp live(%Verdict{node: node} = v, unlisted?, facts) do
    entry = %Entry{verdict: v, probe: Map.get(facts.probes, node)}
    failed_check? = match?({:error, _}, v.health)

    cond do
      node in facts.connected ->
        %{entry | stage: :connected, since: Map.get(facts.since, node)}

      facts.mode == :offline ->
        %{entry | stage: if(failed_check?, do: :health_failed, else: :candidate)}

      unlisted? ->
        %{entry | stage: :not_joining}

      failed_check? and node not in facts.managed ->
        %{entry | stage: :health_failed}

      Map.has_key?(facts.connects, node) ->
        %{entry | stage: :connect_failed, connect: Map.fetch!(facts.connects, node)}

      node in facts.in_flight ->
        %{entry | stage: :connecting}

      true ->
        %{entry | stage: :pending}
    end
  end
end
