defmodule Mix.Tasks.LibclusterDroplet.Explain do
  @shortdoc "Lists a topology's droplets and explains why their nodes would or would not connect"

  @usage "mix libcluster_droplet.explain [--topology NAME] [--dist-port PORT] " <>
           "[--epmd-port PORT] [--timeout MS]"

  @moduledoc """
  `Cluster.Strategy.Droplet.explain/2` from a developer's machine: lists a
  topology's droplets (from `config :libcluster, :topologies`, after
  `mix app.config`), runs their health checks, diagnoses each selected
  node's address and prints the table. It never connects to a node, and
  never prints the token.

      #{@usage}

  `--topology` picks one of several topologies; `--dist-port` is the port
  the nodes listen on (default: the one epmd lists for each node);
  `--epmd-port` defaults to `ERL_EPMD_PORT`, else 4369; `--timeout` is in
  ms per connection and answer (1,000). What this machine can and cannot
  see: [the troubleshooting guide](troubleshooting.md#from-a-developer-s-machine).
  """

  use Mix.Task

  alias Cluster.Strategy.Droplet.Config
  alias LibclusterDroplet.{Error, Explain, HealthCheck, NodeWatch, Pipeline}

  @switches [topology: :string, dist_port: :integer, epmd_port: :integer, timeout: :integer]

  @impl true
  def run(args) do
    {opts, rest, invalid} = OptionParser.parse(args, strict: @switches)

    if rest != [] or invalid != [], do: Mix.raise("usage: " <> @usage)

    Mix.Task.run("app.config")
    {topology, raw} = topology!(Application.get_env(:libcluster, :topologies), opts[:topology])

    config =
      try do
        Config.new!(raw)
      rescue
        e in ArgumentError -> Mix.raise(Exception.message(e))
      end

    diagnosis =
      [probe_timeout: opts[:timeout] || 1_000] ++ Keyword.take(opts, [:epmd_port, :dist_port])

    case report(topology, config, diagnosis) do
      {:ok, report} ->
        Mix.shell().info(Explain.Format.format(report))

      {:error, reason} ->
        Mix.raise(
          "listing the droplets of topology #{inspect(topology)} failed (#{Error.class(reason)}): " <>
            Error.format(reason)
        )
    end
  end

  defp topology!(topologies, wanted) do
    droplet =
      for {name, spec} <- topologies || [],
          Keyword.keyword?(spec),
          spec[:strategy] == Cluster.Strategy.Droplet,
          do: {name, Keyword.get(spec, :config, [])}

    names = Enum.map_join(droplet, ", ", &inspect(elem(&1, 0)))

    case {droplet, wanted} do
      {[], _} ->
        Mix.raise(
          "no Cluster.Strategy.Droplet topology in config :libcluster, :topologies " <>
            "(is the config read by `mix app.config`, e.g. config/runtime.exs?)"
        )

      {[one], nil} ->
        one

      {_, nil} ->
        Mix.raise(
          "several Cluster.Strategy.Droplet topologies (#{names}): pick one with --topology NAME"
        )

      {_, wanted} ->
        # Compared as text: no atom is made from the command line.
        Enum.find(droplet, &(Atom.to_string(elem(&1, 0)) == wanted)) ||
          Mix.raise("no Cluster.Strategy.Droplet topology #{wanted}; the topologies are #{names}")
    end
  end

  # One listing, the pipeline, the health checks, then the diagnosis: what
  # a strategy does, without connecting, on a machine outside the cluster.
  @doc false
  def report(topology, config, diagnosis) do
    listed_at = System.system_time(:millisecond)
    list_opts = [deadline: config.api_timeout * 3] ++ Config.list_options(config)

    # Every option is checked against the token, as a strategy does:
    # node names and filters are printed here.
    with {:ok, secret, _source} <- LibclusterDroplet.Token.fetch(config.token),
         :ok <- Config.check_secret(config, secret),
         {:ok, listing} <- LibclusterDroplet.list_droplets([token: secret] ++ list_opts),
         {:ok, verdicts} <- Pipeline.from_listing(listing.droplets, config, nil) do
      targets = Pipeline.targets(verdicts)
      {verdicts, probes} = check(verdicts, targets, config.health_check)
      requests = if listing.requests == 1, do: "1 request", else: "#{listing.requests} requests"

      listed =
        "listed #{length(listing.droplets)} droplets with #{requests}, #{length(targets)} " <>
          "selected; nothing connects from here, and the cookie is not checked"

      vpc = "vpc: :self is each node's own VPC: from here, every VPC is shown"
      notes = [info: listed] ++ if(config.vpc == :self, do: [info: vpc], else: [])

      facts = %Explain.Facts{
        topology: topology,
        self: Node.self(),
        now: System.system_time(:millisecond),
        mode: :offline,
        config: Explain.Facts.config(config),
        view: %{
          source: :listing,
          listed_at: listed_at,
          applied_at: listed_at,
          verdicts: verdicts,
          pool: listing.pool
        },
        probes: probes,
        notes: notes
      }

      {:ok, Explain.Diagnosis.run(Explain.report(facts), diagnosis)}
    end
  end

  defp check(verdicts, targets, health_check) do
    case HealthCheck.run(targets, health_check) do
      {:ok, results, batch_ms} ->
        at = System.system_time(:millisecond)
        timeout = HealthCheck.timeout(health_check)
        {watch, _events} = NodeWatch.probed(%NodeWatch{}, targets, results, at, batch_ms, timeout)
        {Pipeline.with_results(verdicts, results), watch.probes}

      :unchecked ->
        {Pipeline.with_results(verdicts, :unchecked), %{}}

      {:error, _} ->
        {verdicts, %{}}
    end
  end
end
