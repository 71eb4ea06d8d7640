defmodule LibclusterDroplet.Explain do
  @moduledoc """
  Why nodes do or do not connect: the decisions behind
  `Cluster.Strategy.Droplet.explain/2` and `mix libcluster_droplet.explain`.

  Pure. It turns what a strategy knows (`Facts`: its last view, the health
  probes, the connect failures, who is connected since when, its polls and
  who polls for the cluster) into a `Report`: one `Entry` per droplet of
  the view, with the stage where it stopped, and checks of this node itself.
  The network diagnosis of the entries that did not connect is done by
  `LibclusterDroplet.Explain.Diagnosis`, at the edge, and concluded here by
  `conclude/3`; `format/1` renders the report as a table.

  The stages, in the order a droplet goes through them:

  | stage | meaning |
  | --- | --- |
  | `:outside_filters` | listed, but outside `:regions` or `:vpc` |
  | `:not_active` | its status is not `active` (`new`, `off`, `archive`) |
  | `:no_address` | no address on the chosen network and IP version |
  | `:unusable_name` | its name (or `:node_basename`) and address make no node name |
  | `:duplicate` | another droplet gives the same node name |
  | `:this_node` | the droplet of this very node |
  | `:not_joining` | selected, but this node is not among the selected droplets, so it joins no one |
  | `:health_failed` | its `:health_check` port did not answer: the reason and the time it took |
  | `:pending` | selected, its connect not started yet |
  | `:connecting` | a connect is in flight |
  | `:connect_failed` | connects failed: the reason, how many in a row, and what the diagnosis found |
  | `:connected` | connected, since when |
  | `:candidate` | (`mix libcluster_droplet.explain`, which never connects) selected and healthy, with what the diagnosis found |
  """

  alias LibclusterDroplet.{Error, NodeName, NodeWatch, Plan}

  @stages [
    :outside_filters,
    :not_active,
    :no_address,
    :unusable_name,
    :duplicate,
    :this_node,
    :not_joining,
    :health_failed,
    :pending,
    :connecting,
    :connect_failed,
    :connected,
    :candidate
  ]

  @typedoc "Where a droplet stopped on its way to a connected node; see the module doc."
  @type stage ::
          :outside_filters
          | :not_active
          | :no_address
          | :unusable_name
          | :duplicate
          | :this_node
          | :not_joining
          | :health_failed
          | :pending
          | :connecting
          | :connect_failed
          | :connected
          | :candidate

  @typedoc """
  A droplet as a view saw it: name, status, the address chosen (`nil`
  for none) and why it is outside the filters (`[]` when it is not).
  """
  @type droplet :: {String.t(), atom() | String.t(), String.t() | nil, [Plan.outside()]}

  @typedoc """
  What the network diagnosis of a node found (see `conclude/3`):

    * `{:cookie_mismatch, port}`: the node answers under the expected
      name, yet connects fail;
    * `{:answers, node, port}`: the node answers under the expected name
      (the handshake is not completed, so the cookie is not checked);
    * `{:other_node, node, port}`: another node answers at the address;
    * `{:not_registered, names}`: epmd answers, but lists no node of the
      expected name (`names`: `{name, port}` it does list);
    * `{:dist_closed, port, why}`: epmd lists the node at `port`, which
      does not answer;
    * `{:nothing_answers, {epmd_port, why}, {dist_port, why} | nil}`;
    * `{:not_distribution, port}`: the port accepts TCP but does not speak
      Erlang distribution;
    * `{:refused, status}` / `{:busy, status}`: the node refused the
      handshake, or another one with the same name was in progress.
  """
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

  @typedoc """
  The raw results of a diagnosis (`LibclusterDroplet.Explain.Diagnosis.probe/3`):
  the epmd port asked and its answer, and the distribution port tried
  (`nil` when none is known), where it came from, and what it answered.
  """
  @type probes :: %{
          epmd_port: :inet.port_number(),
          epmd: {:ok, [{String.t(), :inet.port_number()}]} | {:error, term()},
          dist_port: :inet.port_number() | nil,
          dist: {:node, String.t()} | {:status, String.t()} | {:error, term()} | nil
        }

  defmodule Facts do
    @moduledoc """
    What `LibclusterDroplet.Explain.report/1` needs, gathered by the
    strategy (a cheap copy of its state, see `Cluster.Strategy.Droplet.explain/2`)
    or by `mix libcluster_droplet.explain` (`mode: :offline`). Times are
    Unix milliseconds; `now` is when the facts were gathered. Never the token.

      * `config`: the options that shape the explanation (`:network`,
        `:ipv6`, `:node_basename`, `:health_check`, `:require_listed`,
        `:coordinate`, `:polling_interval`, `:regions`, `:vpc`);
      * `view`: the last view applied, `%{source: :listing | {:share, from},
        listed_at:, applied_at:, droplets: [droplet]}`, or `nil`;
      * `probes`: each node's last health probe (`t:LibclusterDroplet.NodeWatch.probe/0`);
      * `connects`: each node's consecutive connect failures,
        `%{count:, reason:, retry_at:}` (`retry_at` in Unix ms);
      * `in_flight`, `managed`, `connected`: nodes with a connect in
        flight, nodes the strategy wants connected, nodes connected now;
        `since`: when each managed node was first seen connected;
      * `polls`, `last_poll_at`, `failures`, `last_error`: successful API
        polls, the time of the last one, consecutive failed ones and the last
        failure (`{class, message}`);
      * `polling`: `:leads` (this node polls and shares), `{:follows, node,
        last_share_at}`, or `:alone` (no coordination).
    """
    defstruct topology: nil,
              self: nil,
              now: 0,
              mode: :strategy,
              alive?: false,
              longnames?: nil,
              config: %{},
              view: nil,
              probes: %{},
              connects: %{},
              in_flight: [],
              managed: [],
              connected: [],
              since: %{},
              polls: 0,
              last_poll_at: nil,
              failures: 0,
              last_error: nil,
              polling: :alone

    @type t :: %__MODULE__{
            topology: atom(),
            self: node(),
            now: integer(),
            mode: :strategy | :offline,
            alive?: boolean(),
            longnames?: boolean() | nil,
            config: map(),
            view:
              %{
                source: :listing | {:share, node()},
                listed_at: integer(),
                applied_at: integer(),
                droplets: [LibclusterDroplet.Explain.droplet()]
              }
              | nil,
            probes: %{node() => NodeWatch.probe()},
            connects: %{node() => %{count: pos_integer(), reason: term(), retry_at: integer()}},
            in_flight: [node()],
            managed: [node()],
            connected: [node()],
            since: %{node() => integer()},
            polls: non_neg_integer(),
            last_poll_at: integer() | nil,
            failures: non_neg_integer(),
            last_error: {atom(), String.t()} | nil,
            polling: :leads | :alone | {:follows, node(), integer() | nil}
          }
  end

  defmodule Entry do
    @moduledoc """
    One droplet of the view and where it stopped (`t:LibclusterDroplet.Explain.stage/0`).

    `node` is the node name the strategy computes (`nil` without one);
    `outside`, the filters it is outside of; `unusable`, why its name makes
    no node name; `probe`, its last health probe; `connect`, its
    consecutive connect failures; `since`, when it was first seen
    connected; `finding`, what the diagnosis found (`t:LibclusterDroplet.Explain.finding/0`).
    """
    defstruct [
      :name,
      :status,
      :address,
      :node,
      :stage,
      :unusable,
      :probe,
      :connect,
      :since,
      :finding,
      outside: []
    ]

    @type t :: %__MODULE__{
            name: String.t(),
            status: atom() | String.t(),
            address: String.t() | nil,
            node: node() | nil,
            stage: LibclusterDroplet.Explain.stage(),
            outside: [Plan.outside()],
            unusable: {:invalid_basename | :invalid_address, String.t()} | nil,
            probe: NodeWatch.probe() | nil,
            connect: %{count: pos_integer(), reason: term(), retry_at: integer()} | nil,
            since: integer() | nil,
            finding: LibclusterDroplet.Explain.finding() | nil
          }
  end

  defmodule Report do
    @moduledoc """
    An explanation: `checks` of this node (`{:ok | :info | :warning, text}`)
    and one `LibclusterDroplet.Explain.Entry` per droplet, sorted by name.
    `facts` are what it was built from. `LibclusterDroplet.Explain.format/1`
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
          "#{LibclusterDroplet.Explain.summary(report)}>"
      end
    end
  end

  ## Building the report

  @doc "Every stage, in the order a droplet goes through them."
  @spec stages() :: [stage()]
  def stages, do: @stages

  @doc """
  The compact form of a listing's droplets that a strategy keeps for
  explain: the kept ones, and the ones `LibclusterDroplet.Plan.filter/3`
  set apart, each with why.
  """
  @spec listed([map()], [{map(), [Plan.outside()]}]) :: [droplet()]
  def listed(kept, excluded) do
    Enum.map(kept, &{&1.name, &1.status, &1.address, []}) ++
      Enum.map(excluded, fn {d, why} -> {d.name, d.status, d.address, why} end)
  end

  @doc "The compact form of a share's droplets: every shared droplet is active."
  @spec shared([{String.t(), String.t()}]) :: [droplet()]
  def shared(droplets),
    do: Enum.map(droplets, fn {name, address} -> {name, :active, address, []} end)

  @doc """
  The options of a strategy's config that shape an explanation (never the
  token): `:network`, `:ipv6`, `:node_basename`, `:health_check`,
  `:require_listed`, `:coordinate`, `:polling_interval`, `:regions`, `:vpc`.
  """
  @spec config_facts(Cluster.Strategy.Droplet.Config.t()) :: map()
  def config_facts(config) do
    Map.take(config, [
      :network,
      :ipv6,
      :node_basename,
      :health_check,
      :require_listed,
      :coordinate,
      :polling_interval,
      :regions,
      :vpc
    ])
  end

  @doc """
  Builds the report: one entry per droplet of the view, and the checks of
  this node. Entries still to be diagnosed have `finding: nil`
  (see `to_diagnose/1`).
  """
  @spec report(Facts.t()) :: Report.t()
  def report(%Facts{} = facts) do
    %Report{
      topology: facts.topology,
      self: facts.self,
      mode: facts.mode,
      facts: facts,
      checks: checks(facts),
      entries: entries(facts)
    }
  end

  @doc """
  The entries of the view, sorted by droplet name, each at its stage.

      iex> alias LibclusterDroplet.Explain
      iex> facts = %Explain.Facts{self: :"app@10.0.0.2", alive?: true, config: %{node_basename: "app", require_listed: true},
      ...>   view: %{source: :listing, listed_at: 0, applied_at: 0, droplets: [
      ...>     {"web-1", :active, "10.0.0.2", []}, {"web-2", :active, "10.0.0.3", []},
      ...>     {"web-3", :off, nil, []}, {"web-4", :active, "10.0.0.5", [{:region, "ams3"}]}]},
      ...>   managed: [:"app@10.0.0.3"], connected: [:"app@10.0.0.3"], since: %{:"app@10.0.0.3" => 0}}
      iex> Explain.entries(facts) |> Enum.map(&{&1.name, &1.stage})
      [{"web-1", :this_node}, {"web-2", :connected}, {"web-3", :not_active}, {"web-4", :outside_filters}]
  """
  @spec entries(Facts.t()) :: [Entry.t()]
  def entries(%Facts{view: nil}), do: []

  def entries(%Facts{view: view} = facts) do
    basename = Map.get(facts.config, :node_basename)
    unlisted? = unlisted?(facts)

    {entries, _seen} =
      view.droplets
      |> Enum.sort_by(fn {name, _, address, _} -> {name, address || ""} end)
      |> Enum.map_reduce(MapSet.new(), fn {name, status, address, outside}, seen ->
        entry = %Entry{name: name, status: status, address: address, outside: outside}
        stage(entry, basename, seen, unlisted?, facts)
      end)

    entries
  end

  defp stage(%Entry{outside: [_ | _]} = e, _basename, seen, _unlisted?, _facts),
    do: {%{e | stage: :outside_filters}, seen}

  defp stage(%Entry{status: status} = e, _basename, seen, _unlisted?, _facts)
       when status != :active,
       do: {%{e | stage: :not_active}, seen}

  defp stage(%Entry{address: nil} = e, _basename, seen, _unlisted?, _facts),
    do: {%{e | stage: :no_address}, seen}

  defp stage(%Entry{} = e, basename, seen, unlisted?, facts) do
    base = basename || e.name

    case NodeName.build(base, e.address) do
      {:error, reason} ->
        {%{e | stage: :unusable_name, unusable: {reason, base}}, seen}

      {:ok, node} ->
        e = %{e | node: node}

        cond do
          node == facts.self -> {%{e | stage: :this_node}, seen}
          MapSet.member?(seen, node) -> {%{e | stage: :duplicate}, seen}
          true -> {node_stage(e, unlisted?, facts), MapSet.put(seen, node)}
        end
    end
  end

  defp node_stage(%Entry{node: node} = e, unlisted?, facts) do
    probe = Map.get(facts.probes, node)
    e = %{e | probe: probe}
    failed_probe? = match?(%{result: {:error, _}}, probe)

    cond do
      node in facts.connected ->
        %{e | stage: :connected, since: Map.get(facts.since, node)}

      facts.mode == :offline ->
        if failed_probe?, do: %{e | stage: :health_failed}, else: %{e | stage: :candidate}

      unlisted? ->
        %{e | stage: :not_joining}

      failed_probe? and node not in facts.managed ->
        %{e | stage: :health_failed}

      Map.has_key?(facts.connects, node) ->
        %{e | stage: :connect_failed, connect: Map.fetch!(facts.connects, node)}

      node in facts.in_flight ->
        %{e | stage: :connecting}

      true ->
        %{e | stage: :pending}
    end
  end

  # This node joins no one when it must be listed and is not.
  defp unlisted?(%Facts{mode: :offline}), do: false

  defp unlisted?(%Facts{} = facts),
    do: Map.get(facts.config, :require_listed, true) and facts.alive? and not self_listed?(facts)

  defp self_listed?(%Facts{view: nil}), do: false

  defp self_listed?(%Facts{view: view, self: self} = facts) do
    basename = Map.get(facts.config, :node_basename)

    Enum.any?(view.droplets, fn
      {name, :active, address, []} when is_binary(address) ->
        NodeName.build(basename || name, address) == {:ok, self}

      _ ->
        false
    end)
  end

  @doc """
  The entries the network diagnosis should look at: those whose connects
  failed or are in flight (on a strategy), or the healthy candidates (offline).
  """
  @spec to_diagnose(Report.t()) :: [Entry.t()]
  def to_diagnose(%Report{entries: entries}),
    do: Enum.filter(entries, &(&1.stage in [:connect_failed, :connecting, :candidate]))

  @doc "Puts the findings (by node) into the report's entries."
  @spec put_findings(Report.t(), %{node() => finding()}) :: Report.t()
  def put_findings(%Report{} = report, findings) do
    entries = Enum.map(report.entries, &%{&1 | finding: Map.get(findings, &1.node, &1.finding)})
    %{report | entries: entries}
  end

  @doc """
  What the diagnosis of `expected` (a node name) found, from its raw
  `probes`. `connect_failed?` says whether this node's connects to it
  fail: a node that answers under the expected name is then most likely
  refused for its cookie. The distribution port is what a connect uses,
  so its answer comes first; epmd's says what runs when it does not answer.

      iex> alias LibclusterDroplet.Explain
      iex> Explain.conclude(:"app@10.0.0.3", %{epmd_port: 4369, epmd: {:ok, [{"web", 9100}]}, dist_port: 9100,
      ...>   dist: {:node, "web@10.0.0.3"}}, true)
      {:other_node, "web@10.0.0.3", 9100}
      iex> Explain.conclude(:"app@10.0.0.3", %{epmd_port: 4369, epmd: {:ok, [{"web", 9100}]}, dist_port: nil, dist: nil}, true)
      {:not_registered, [{"web", 9100}]}
      iex> Explain.conclude(:"app@10.0.0.3", %{epmd_port: 4369, epmd: {:error, :refused}, dist_port: 9100, dist: {:node, "app@10.0.0.3"}}, true)
      {:cookie_mismatch, 9100}
  """
  @spec conclude(node(), probes(), boolean()) :: finding()
  def conclude(expected, probes, connect_failed?) do
    expected = Atom.to_string(expected)
    port = probes.dist_port

    case probes.dist do
      {:node, ^expected} ->
        if connect_failed?, do: {:cookie_mismatch, port}, else: {:answers, expected, port}

      {:node, other} ->
        {:other_node, other, port}

      {:status, status} when status in ["nok", "alive", "ok_simultaneous"] ->
        {:busy, status}

      {:status, status} ->
        {:refused, status}

      {:error, :not_distribution} ->
        {:not_distribution, port}

      unanswered ->
        conclude_epmd(expected, probes, unanswered)
    end
  end

  defp conclude_epmd(expected, probes, unanswered) do
    [basename | _] = String.split(expected, "@", parts: 2)

    case probes.epmd do
      {:ok, names} ->
        case List.keyfind(names, basename, 0) do
          {_, port} -> {:dist_closed, port, dist_error(unanswered)}
          nil -> {:not_registered, names}
        end

      {:error, why} ->
        dist = if probes.dist_port, do: {probes.dist_port, dist_error(unanswered)}
        {:nothing_answers, {probes.epmd_port, why}, dist}
    end
  end

  defp dist_error({:error, why}), do: why
  defp dist_error(_), do: :not_tried

  ## Checks of this node

  @doc """
  Checks of this node itself: distribution (started, long names), whether
  its own name is among the selected droplets (and which names were
  expected), how old its last successful poll is, and who polls for the
  cluster. Offline, only what the listing says.
  """
  @spec checks(Facts.t()) :: [Report.check()]
  def checks(%Facts{mode: :offline} = facts) do
    [view_check(facts)]
  end

  def checks(%Facts{} = facts) do
    # A node without distribution joins nothing whatever the listing says.
    listed = if facts.alive?, do: [listed_check(facts)], else: []

    [distribution_check(facts)] ++
      listed ++
      [poll_check(facts), polling_check(facts)] ++
      if(facts.view, do: [view_check(facts)], else: [])
  end

  defp distribution_check(%Facts{alive?: false} = facts) do
    {:warning,
     "distribution is not started (this node is #{inspect(facts.self)}): it connects to no one; " <>
       "start it with a long name, basename@address (RELEASE_DISTRIBUTION=name, RELEASE_NODE=app@<address>)"}
  end

  defp distribution_check(%Facts{longnames?: false} = facts) do
    {:warning,
     "this node runs with short names (#{inspect(facts.self)}): nodes named basename@address need long names " <>
       "(-name, RELEASE_DISTRIBUTION=name)"}
  end

  defp distribution_check(facts),
    do: {:ok, "distribution is started with long names: this node is #{inspect(facts.self)}"}

  defp listed_check(%Facts{view: nil}),
    do: {:info, "no view yet: whether this node is among the selected droplets is not known"}

  defp listed_check(%Facts{} = facts) do
    candidates = selected_nodes(facts)

    cond do
      self_listed?(facts) ->
        {:ok, "this node is among the selected droplets (#{length(candidates) + 1} in all)"}

      Map.get(facts.config, :require_listed, true) ->
        {:warning,
         "this node #{inspect(facts.self)} is not among the #{length(candidates)} selected droplets, " <>
           "so it joins no one; the strategy computes names such as #{expected(candidates)}: " <>
           "fix RELEASE_NODE (basename@ the droplet's #{network(facts.config)} address) or :node_basename, " <>
           "or set require_listed: false on a node that is not a droplet"}

      true ->
        {:info,
         "this node #{inspect(facts.self)} is not among the selected droplets; require_listed: false lets it join anyway"}
    end
  end

  defp selected_nodes(facts) do
    facts
    |> entries()
    |> Enum.filter(&(&1.node != nil and &1.stage not in [:this_node, :duplicate]))
    |> Enum.map(& &1.node)
  end

  defp expected([]), do: "none (no droplet is selected)"
  defp expected(nodes), do: nodes |> Enum.take(5) |> Enum.map_join(", ", &inspect/1)

  defp poll_check(%Facts{last_poll_at: nil, failures: 0}),
    do: {:info, "no API poll has succeeded yet on this node"}

  defp poll_check(%Facts{failures: 0} = facts),
    do:
      {:ok,
       "last successful API poll #{ago(facts.now, facts.last_poll_at)} (#{facts.polls} in all)"}

  defp poll_check(%Facts{} = facts) do
    {class, message} = facts.last_error || {:unknown, "unknown"}

    last =
      if facts.last_poll_at,
        do: "the last success was #{ago(facts.now, facts.last_poll_at)}",
        else: "none has succeeded yet"

    {:warning,
     "the last #{facts.failures} API polls failed (#{class}: #{message}); #{last}; membership is kept as it is"}
  end

  defp polling_check(%Facts{polling: :leads}),
    do: {:info, "this node polls the API for the cluster and shares what it finds"}

  defp polling_check(%Facts{polling: {:follows, leader, at}} = facts) do
    seen = if at, do: " (its last share arrived #{ago(facts.now, at)})", else: ""
    {:info, "this node follows #{inspect(leader)}, which polls the API for the cluster#{seen}"}
  end

  defp polling_check(%Facts{config: config}) do
    if Map.get(config, :coordinate, true),
      do: {:info, "this node polls the API on its own (connected to no other strategy yet)"},
      else: {:info, "coordinate: false: this node polls the API on its own"}
  end

  defp view_check(%Facts{view: nil, mode: :offline}),
    do: {:info, "no listing"}

  defp view_check(%Facts{view: view} = facts) do
    from =
      case view.source do
        :listing -> "the API listing"
        {:share, from} -> "the share from #{inspect(from)}"
      end

    applied =
      if facts.mode == :offline, do: "", else: ", applied #{ago(facts.now, view.applied_at)}"

    {:info,
     "#{length(view.droplets)} droplets in #{from} of #{timestamp(view.listed_at)}#{applied}"}
  end

  ## Rendering

  @doc "A one-line count of the entries by stage."
  @spec summary(Report.t()) :: String.t()
  def summary(%Report{entries: entries}) do
    counts = Enum.frequencies_by(entries, & &1.stage)

    by_stage = for stage <- @stages, n = Map.get(counts, stage), do: "#{n} #{stage_label(stage)}"

    "#{length(entries)} droplets" <>
      if(by_stage == [], do: "", else: ": " <> Enum.join(by_stage, ", "))
  end

  @doc """
  The report as text: the checks, then a table with one row per droplet
  (droplet, status, address, node, stage, detail), then a summary.
  """
  @spec format(Report.t()) :: String.t()
  def format(%Report{} = report) do
    facts = report.facts

    title =
      case report.mode do
        :offline ->
          "libcluster_droplet: topology #{inspect(report.topology)}, listed from this machine"

        :strategy ->
          "libcluster_droplet: topology #{inspect(report.topology)} on #{inspect(report.self)}"
      end

    checks =
      Enum.map(report.checks, fn {level, text} -> "  #{pad(level_label(level), 8)}#{text}" end)

    rows =
      Enum.map(report.entries, fn e ->
        [
          e.name,
          to_string(e.status),
          e.address || "-",
          if(e.node, do: Atom.to_string(e.node), else: "-"),
          stage_label(e.stage),
          detail(e, facts)
        ]
      end)

    table =
      if rows == [],
        do: ["  (no droplets in the last view)"],
        else: table([["DROPLET", "STATUS", "ADDRESS", "NODE", "STAGE", "DETAIL"] | rows])

    Enum.join([title, "" | checks] ++ ["" | table] ++ ["", "  " <> summary(report)], "\n")
  end

  defp table(rows) do
    widths =
      rows
      |> Enum.map(fn row -> row |> Enum.drop(-1) |> Enum.map(&String.length/1) end)
      |> Enum.zip_with(&Enum.max/1)

    Enum.map(rows, fn row ->
      {cells, [last]} = Enum.split(row, -1)

      line = cells |> Enum.zip(widths) |> Enum.map_join("", fn {cell, w} -> pad(cell, w + 2) end)

      String.trim_trailing("  " <> line <> last)
    end)
  end

  defp pad(text, width), do: String.pad_trailing(text, width)

  defp level_label(:ok), do: "ok"
  defp level_label(:info), do: "info"
  defp level_label(:warning), do: "WARNING"

  @doc "A stage in words, as in the table."
  @spec stage_label(stage()) :: String.t()
  def stage_label(:outside_filters), do: "outside filters"
  def stage_label(:not_active), do: "not active"
  def stage_label(:no_address), do: "no address"
  def stage_label(:unusable_name), do: "unusable name"
  def stage_label(:duplicate), do: "duplicate"
  def stage_label(:this_node), do: "this node"
  def stage_label(:not_joining), do: "not joining"
  def stage_label(:health_failed), do: "health failed"
  def stage_label(:pending), do: "pending"
  def stage_label(:connecting), do: "connecting"
  def stage_label(:connect_failed), do: "connect failed"
  def stage_label(:connected), do: "connected"
  def stage_label(:candidate), do: "candidate"

  @doc "The table's detail column for one entry."
  @spec detail(Entry.t(), Facts.t()) :: String.t()
  def detail(%Entry{stage: :outside_filters, outside: outside}, _facts),
    do: Enum.map_join(outside, "; ", &describe_outside/1)

  def detail(%Entry{stage: :not_active, status: status}, _facts),
    do: "status #{status}: only active droplets are selected"

  def detail(%Entry{stage: :no_address}, facts),
    do: "no #{network(facts.config)} address"

  def detail(%Entry{stage: :unusable_name, unusable: {reason, base}, address: address}, _facts),
    do: Plan.describe_unusable(reason, base, address)

  def detail(%Entry{stage: :duplicate}, _facts),
    do:
      "another droplet has the same node name (same basename and address); only the first counts"

  def detail(%Entry{stage: :this_node}, _facts), do: ""

  def detail(%Entry{stage: :not_joining}, _facts),
    do: "this node is not among the selected droplets, so it connects to no one (see above)"

  def detail(%Entry{stage: :health_failed, probe: probe}, facts),
    do: "#{describe_probe(probe, health_port(facts))}, #{probe.failed} in a row"

  def detail(%Entry{stage: :pending} = e, facts),
    do:
      join([
        probe_note(e, facts),
        "selected; its connect has not started yet " <>
          "(at most #{LibclusterDroplet.Connector.max_in_flight()} run at once)"
      ])

  def detail(%Entry{stage: :connecting} = e, facts),
    do: join([probe_note(e, facts), "a connect is in flight", finding_text(e)])

  def detail(%Entry{stage: :connect_failed, connect: c} = e, facts) do
    next =
      cond do
        e.node in facts.in_flight -> "a retry is in flight"
        c.retry_at > facts.now -> "next attempt in #{duration(c.retry_at - facts.now)}"
        true -> "next attempt due"
      end

    attempts =
      if c.count == 1, do: "1 connect failed", else: "#{c.count} connects failed in a row"

    join([
      probe_note(e, facts),
      "#{attempts} (#{describe_connect_error(c.reason)}), #{next}",
      finding_text(e)
    ])
  end

  def detail(%Entry{stage: :connected, since: since} = e, facts) do
    since = if since, do: "since #{timestamp(since)} (#{ago(facts.now, since)})", else: ""
    join([since, strikes_note(e)])
  end

  def detail(%Entry{stage: :candidate} = e, facts),
    do: join([probe_note(e, facts), finding_text(e) || "not diagnosed"])

  defp join(parts), do: parts |> Enum.reject(&(&1 in [nil, ""])) |> Enum.join("; ")

  defp probe_note(%Entry{probe: %{result: :ok} = probe}, facts),
    do: describe_probe(probe, health_port(facts))

  defp probe_note(_entry, _facts), do: nil

  # A connected node that fails its probes stays managed until the strikes run out.
  defp strikes_note(%Entry{probe: %{result: {:error, reason}, failed: n}}),
    do:
      "failed its last #{n} health check(s) (#{describe_probe_error(reason)}); " <>
        "no longer managed after #{Plan.probe_strikes()} in a row, never disconnected for it"

  defp strikes_note(_entry), do: nil

  defp finding_text(%Entry{finding: nil}), do: nil
  defp finding_text(%Entry{finding: finding} = e), do: describe_finding(finding, e)

  defp health_port(%Facts{config: config}) do
    case Map.get(config, :health_check) do
      {:tcp, opts} -> opts[:port]
      _ -> nil
    end
  end

  defp network(config) do
    ip = if Map.get(config, :ipv6, false), do: "IPv6", else: "IPv4"
    "#{Map.get(config, :network, :private)} #{ip}"
  end

  @doc "Why a droplet is outside the filters, in words."
  @spec describe_outside(Plan.outside()) :: String.t()
  def describe_outside({:region, nil}), do: "no region, and :regions is set"
  def describe_outside({:region, slug}), do: "region #{slug} is not among :regions"
  def describe_outside({:vpc, nil}), do: "no VPC, and :vpc is set"
  def describe_outside({:vpc, uuid}), do: "VPC #{uuid} is not the :vpc asked for"

  @doc """
  A health probe in words, with the time it took.

      iex> LibclusterDroplet.Explain.describe_probe(%{result: {:error, :refused}, took_ms: 3, exact?: false}, 4000)
      "port 4000: connection refused (in at most 3 ms)"
      iex> LibclusterDroplet.Explain.describe_probe(%{result: :ok, took_ms: 0.42, exact?: true}, 4000)
      "port 4000 answered in 0.42 ms"
  """
  @spec describe_probe(map(), :inet.port_number() | nil) :: String.t()
  def describe_probe(%{result: :ok, took_ms: ms}, port),
    do: "port #{port} answered in #{ms(ms)}"

  def describe_probe(%{result: {:error, :timeout}, took_ms: ms}, port),
    do: "port #{port}: no answer within #{ms(ms)}"

  def describe_probe(%{result: {:error, reason}, took_ms: ms, exact?: exact?}, port) do
    took = if exact?, do: "in #{ms(ms)}", else: "in at most #{ms(ms)}"
    "port #{port}: #{describe_probe_error(reason)} (#{took})"
  end

  @doc "A health probe's error in words."
  @spec describe_probe_error(term()) :: String.t()
  def describe_probe_error(:refused), do: "connection refused"
  def describe_probe_error(:timeout), do: "no answer"
  def describe_probe_error(:unreachable), do: "host unreachable"
  def describe_probe_error(:invalid_address), do: "not an IP address"
  def describe_probe_error(:not_checked), do: "not checked"
  def describe_probe_error({:io, detail}) when is_binary(detail), do: detail
  def describe_probe_error(other), do: inspect(other)

  @doc "A connect failure, as `LibclusterDroplet.Membership.connect_nodes/4` reports it, in words."
  @spec describe_connect_error(term()) :: String.t()
  def describe_connect_error(false), do: "net_kernel could not set up the connection"
  def describe_connect_error(:ignored), do: "this node is not alive (distribution not started)"
  def describe_connect_error({:exit, reason}), do: "the connect task exited: #{inspect(reason)}"
  def describe_connect_error(other), do: inspect(other)

  @doc """
  A finding in words, with what to do about it.

      iex> e = %LibclusterDroplet.Explain.Entry{node: :"app@10.0.0.3", address: "10.0.0.3"}
      iex> LibclusterDroplet.Explain.describe_finding({:not_registered, [{"web", 9100}]}, e)
      "runs `web@10.0.0.3` (epmd lists web at port 9100, no app); the strategy expects `app@10.0.0.3`: set node_basename: \\"web\\" or fix RELEASE_NODE"
  """
  @spec describe_finding(finding(), Entry.t()) :: String.t()
  def describe_finding({:cookie_mismatch, port}, %Entry{} = e) do
    "`#{e.node}` answers at #{host_port(e.address, port)} but the handshake fails: " <>
      "most likely a cookie mismatch (set the same RELEASE_COOKIE on every node)"
  end

  def describe_finding({:answers, node, port}, %Entry{} = e),
    do: "`#{node}` answers at #{host_port(e.address, port)} (the cookie is not checked from here)"

  def describe_finding({:other_node, other, port}, %Entry{} = e) do
    "runs `#{other}` (it answered at #{host_port(e.address, port)}); " <>
      "the strategy expects `#{e.node}`: " <> fix_name(other, e.node)
  end

  def describe_finding({:not_registered, []}, %Entry{} = e) do
    "epmd at #{e.address} answers but lists no node: is the release running, with distribution started " <>
      "(expected `#{e.node}`)?"
  end

  def describe_finding({:not_registered, names}, %Entry{} = e) do
    [basename | _] = e.node |> Atom.to_string() |> String.split("@", parts: 2)
    running = Enum.map_join(names, ", ", fn {name, _} -> "`#{name}@#{e.address}`" end)
    listed = Enum.map_join(names, ", ", fn {name, port} -> "#{name} at port #{port}" end)
    suggested = names |> Enum.map(&elem(&1, 0)) |> Enum.reject(&temporary_name?/1)
    suggestion = List.first(suggested) || elem(hd(names), 0)

    "runs #{running} (epmd lists #{listed}, no #{basename}); the strategy expects `#{e.node}`: " <>
      fix_name("#{suggestion}@#{e.address}", e.node)
  end

  def describe_finding({:dist_closed, port, why}, %Entry{} = e) do
    "epmd lists the node at port #{port}, but #{host_port(e.address, port)} #{describe_socket_error(why)}: " <>
      "open the distribution port between the droplets (see Firewalls and ports)"
  end

  def describe_finding({:nothing_answers, {epmd_port, epmd_why}, dist}, %Entry{} = e) do
    dist_text =
      case dist do
        {port, why} -> ", distribution port #{port} #{describe_socket_error(why)}"
        nil -> ""
      end

    "nothing answers at #{e.address}: epmd port #{epmd_port} #{describe_socket_error(epmd_why)}#{dist_text}; " <>
      "the droplet is down, its release is not running, or a firewall drops these ports"
  end

  def describe_finding({:not_distribution, port}, %Entry{} = e) do
    "#{host_port(e.address, port)} accepts TCP but does not speak Erlang distribution " <>
      "(TLS distribution, or another service on that port)"
  end

  def describe_finding({:refused, status}, %Entry{} = e) do
    "`#{e.node}` refuses the handshake (status #{status}): net_kernel:allow/1 on it, " <>
      "or a release it cannot talk to"
  end

  def describe_finding({:busy, status}, %Entry{}),
    do: "another handshake with the node was in progress (status #{status}); run explain again"

  # Remote consoles and rpc calls of a release register such names beside the node.
  defp temporary_name?(name), do: String.match?(name, ~r/^(rem|rpc|maint|remsh)[-_]/)

  defp fix_name(running, expected) do
    [run_base, run_host] = String.split(to_string(running), "@", parts: 2)
    [exp_base, exp_host] = expected |> Atom.to_string() |> String.split("@", parts: 2)

    cond do
      run_host != exp_host ->
        "name the node after the droplet's address (RELEASE_NODE=#{run_base}@#{exp_host})" <>
          if(run_base != exp_base, do: " and set node_basename: #{inspect(run_base)}", else: "")

      true ->
        "set node_basename: #{inspect(run_base)} or fix RELEASE_NODE"
    end
  end

  defp describe_socket_error(:refused), do: "refused the connection"
  defp describe_socket_error(:econnrefused), do: "refused the connection"
  defp describe_socket_error(:timeout), do: "did not answer in time"
  defp describe_socket_error(:not_tried), do: "was not tried"
  defp describe_socket_error(:closed), do: "closed the connection"
  defp describe_socket_error(other), do: "failed (#{inspect(other)})"

  defp host_port(address, port) do
    if String.contains?(address, ":"), do: "[#{address}]:#{port}", else: "#{address}:#{port}"
  end

  ## Times

  defp timestamp(unix_ms) do
    unix_ms
    |> DateTime.from_unix!(:millisecond)
    |> DateTime.truncate(:second)
    |> DateTime.to_iso8601()
  end

  defp ago(now, at), do: "#{duration(max(now - at, 0))} ago"

  @doc """
  A duration in ms, in words.

      iex> LibclusterDroplet.Explain.duration(1_234)
      "1.2 s"
      iex> LibclusterDroplet.Explain.duration(125_000)
      "2 min 5 s"
  """
  @spec duration(non_neg_integer()) :: String.t()
  def duration(ms) when ms < 1_000, do: "#{ms} ms"
  def duration(ms) when ms < 60_000, do: "#{Float.round(ms / 1000, 1)} s"

  def duration(ms) when ms < 3_600_000,
    do: "#{div(ms, 60_000)} min #{div(rem(ms, 60_000), 1000)} s"

  def duration(ms), do: "#{div(ms, 3_600_000)} h #{div(rem(ms, 3_600_000), 60_000)} min"

  defp ms(ms) when is_integer(ms), do: "#{ms} ms"
  defp ms(ms) when is_float(ms) and ms >= 10, do: "#{round(ms)} ms"
  defp ms(ms) when is_float(ms), do: "#{Float.round(ms, 2)} ms"

  @doc false
  # Error classes for Facts.last_error, without the module's reason table.
  @spec error_summary(term()) :: {atom(), String.t()}
  def error_summary(reason), do: {Error.class(reason), Error.format(reason)}
end
