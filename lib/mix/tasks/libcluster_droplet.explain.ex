defmodule Mix.Tasks.LibclusterDroplet.Explain do
  @shortdoc "Lists a topology's droplets and explains why their nodes would or would not connect"

  @moduledoc """
  `Cluster.Strategy.Droplet.explain/2` from a developer's machine: lists
  the droplets of a topology of this application's config, runs its health
  checks and diagnoses every selected node's address (which names epmd
  lists there, which node answers at the distribution port), and prints
  the table. It never connects to any node: the handshake it starts is
  stopped before the cookie is sent.

      mix libcluster_droplet.explain [--topology NAME] [--dist-port PORT] [--epmd-port PORT] [--timeout MS]

  The topology is read from `config :libcluster, topologies: [...]` after
  `mix app.config` (so `config/runtime.exs` is read too); with several
  `Cluster.Strategy.Droplet` topologies, `--topology` picks one. The token
  comes from the topology's `:token`, in any of its forms (an environment
  variable with `{:system, "DIGITALOCEAN_TOKEN"}`, a file with `{:file, path}`…);
  it is never printed.

    * `--dist-port` - the distribution port the nodes listen on (pinned with
      `inet_dist_listen_min`/`max`, or `-erl_epmd_port`); without it, the
      port epmd lists for each expected node is tried;
    * `--epmd-port` - epmd's port (default `ERL_EPMD_PORT`, else 4369);
    * `--timeout` - ms per connection and per answer (default 1,000).

  This machine is not a droplet: `vpc: :self` cannot be applied from here
  (every VPC is shown), nothing is "this node", and the addresses must be
  reachable from here (a private network is only reachable from inside the
  VPC: run it on a droplet, or with `network: :public`).
  """

  use Mix.Task

  alias Cluster.Strategy.Droplet.Config
  alias LibclusterDroplet.{Error, Explain, HealthCheck, NodeWatch, Pipeline}

  @switches [topology: :string, dist_port: :integer, epmd_port: :integer, timeout: :integer]

  @impl true
  def run(args) do
    {opts, rest, invalid} = OptionParser.parse(args, strict: @switches)

    if rest != [] or invalid != [] do
      Mix.raise(
        "usage: mix libcluster_droplet.explain [--topology NAME] [--dist-port PORT] " <>
          "[--epmd-port PORT] [--timeout MS]"
      )
    end

    Mix.Task.run("app.config")
    {topology, raw} = topology!(Application.get_env(:libcluster, :topologies), opts[:topology])

    config =
      try do
        Config.new!(raw)
      rescue
        e in ArgumentError -> Mix.raise(Exception.message(e))
      end

    diagnosis = [
      probe_timeout: opts[:timeout] || 1_000,
      epmd_port: opts[:epmd_port],
      dist_port: opts[:dist_port]
    ]

    case report(topology, config, Enum.reject(diagnosis, &(elem(&1, 1) == nil))) do
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
  # a strategy does, without connecting. This machine is no node of the
  # cluster: nothing is "this node", and vpc: :self cannot be applied.
  @doc false
  # The report the task prints, for `config` (a validated config).
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

      notes =
        [
          {:info,
           "listed #{length(listing.droplets)} droplets with #{requests}, #{length(targets)} " <>
             "selected; nothing connects from here, and the cookie is not checked"}
        ] ++
          if config.vpc == :self,
            do: [{:info, "vpc: :self is each node's own VPC: from here, every VPC is shown"}],
            else: []

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
