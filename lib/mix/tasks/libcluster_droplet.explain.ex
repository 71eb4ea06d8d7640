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
  alias LibclusterDroplet.{Error, Explain, NodeWatch, Plan}

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

    case report(topology, config, raw[:token], Enum.reject(diagnosis, &(elem(&1, 1) == nil))) do
      {:ok, report} ->
        Mix.shell().info(Explain.format(report))

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

  # One listing, the filters, the health probes, then the diagnosis: what a
  # strategy would do, without connecting.
  defp report(topology, config, token, diagnosis) do
    listed_at = System.system_time(:millisecond)

    with {:ok, listing} <-
           LibclusterDroplet.list_droplets(
             [token: token, deadline: config.api_timeout * 3] ++ Config.list_options(config)
           ),
         # This machine has no droplet, so it has no VPC of its own.
         filters = if(config.vpc == :self, do: %{config | vpc: nil}, else: config),
         {:ok, kept, excluded} <- Plan.filter(listing.droplets, filters, Node.self()) do
      selection = Plan.select(kept, config.node_basename, Node.self())
      probes = probe(selection, config.health_check)

      facts = %Explain.Facts{
        topology: topology,
        self: Node.self(),
        now: System.system_time(:millisecond),
        mode: :offline,
        config: Explain.config_facts(config),
        view: %{
          source: :listing,
          listed_at: listed_at,
          applied_at: System.system_time(:millisecond),
          droplets: Explain.listed(kept, excluded)
        },
        probes: probes
      }

      notes =
        [
          {:info,
           "listed #{length(listing.droplets)} droplets with #{listing.requests} " <>
             "request#{if listing.requests == 1, do: "", else: "s"}, " <>
             "#{length(selection.candidates)} selected; nothing connects from here, and the cookie is not checked"}
        ] ++
          if config.vpc == :self,
            do: [{:info, "vpc: :self is each node's own VPC: from here, every VPC is shown"}],
            else: []

      report = Explain.report(facts)

      {:ok, Explain.Diagnosis.run(%{report | checks: notes ++ report.checks}, diagnosis)}
    end
  end

  defp probe(_selection, nil), do: %{}

  defp probe(selection, {:tcp, port: port, timeout: timeout}) do
    started = System.monotonic_time()

    results =
      LibclusterDroplet.probe(Enum.map(selection.candidates, &elem(&1, 1)), port, timeout: timeout)

    batch_us = System.convert_time_unit(System.monotonic_time() - started, :native, :microsecond)

    case results do
      {:error, _} ->
        %{}

      results ->
        {watch, _events} =
          NodeWatch.probed(
            %NodeWatch{},
            selection.candidates,
            results,
            System.system_time(:millisecond),
            batch_us / 1000,
            timeout
          )

        watch.probes
    end
  end
end
