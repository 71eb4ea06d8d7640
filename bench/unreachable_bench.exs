# Unreachable droplets: what listed droplets whose distribution port drops
# packets (a missing firewall rule, a private address in another VPC) cost a
# cluster. Connecting to such a node blocks the caller for net_setuptime
# (7 s by default); a strategy that connects nodes one after another inside
# its own process is then blocked too: polling, joins, removals and
# :sys.get_state/2 wait. Measured for Cluster.Strategy.Droplet and, side by
# side, for libcluster 3.5.0's sequential Cluster.Strategy.connect_nodes/4
# in a minimal poller. Run with `make bench BENCH=unreachable` or
# `MIX_ENV=dev mix run --no-start bench/run.exs unreachable`.
#
# Knobs (environment variables), for shorter runs while developing:
#
#   UNREACHABLE_COUNTS="0,4,16"   unreachable droplets per cell (include 0:
#                                 it is the reference of the target)
#   UNREACHABLE_VARIANTS="strategy,libcluster"   one of them, or both
#   UNREACHABLE_INTERVAL_MS=1000  polling interval of both variants
#   UNREACHABLE_CAP_MS=30000      longest wait for each event ("> cap" past it)
#   UNREACHABLE_SETUPTIME_S=7     the nodes' net_setuptime (OTP's default 7 s),
#                                 i.e. how long one connect to a black hole hangs
#   UNREACHABLE_HEALTH_PORT=4000  the health-check port of every droplet
#   UNREACHABLE_STRATEGY_WITH_LIBCLUSTER=1   load the real libcluster in the
#                                 strategy's nodes too (it then delegates to
#                                 Cluster.Strategy.connect_nodes/4)
#   UNREACHABLE_VENDOR_DIR=...    where libcluster, jason and telemetry are
#                                 (default ../shared/vendor from the project)
Code.require_file("support/bench_helper.exs", __DIR__)

{:module, _, peer_beam, _} =
  defmodule Bench.Unreachable.Peer do
    @moduledoc false
    # Runs inside the test nodes: the bench loads this module's object code
    # there with :code.load_binary/3 (it exists nowhere on disk). It holds
    #   * a TCP listener for the health check;
    #   * a sampler of the clustering process's :sys.get_state/2 latency;
    #   * the baseline: a minimal poller in the shape of libcluster's own
    #     polling strategies (Cluster.Strategy.Kubernetes' load/1), which
    #     calls libcluster's Cluster.Strategy.connect_nodes/4.
    use GenServer

    @compile {:no_warn_undefined, Cluster.Strategy}

    @sampler Module.concat(__MODULE__, Sampler)
    @poller Module.concat(__MODULE__, Poller)

    # ------------------------------------------------------------ listener

    @doc "Listens on `address:port` and accepts (and closes) connections in a process of its own."
    def listen(address, port) do
      caller = self()
      ref = make_ref()

      pid =
        spawn(fn ->
          {:ok, ip} = :inet.parse_address(String.to_charlist(address))
          result = :gen_tcp.listen(port, ip: ip, backlog: 128, reuseaddr: true, active: false)
          send(caller, {ref, result})
          with {:ok, listener} <- result, do: accept_loop(listener)
        end)

      receive do
        {^ref, {:ok, _}} -> {:ok, pid}
        {^ref, error} -> error
      end
    end

    defp accept_loop(listener) do
      with {:ok, socket} <- :gen_tcp.accept(listener) do
        :gen_tcp.close(socket)
        accept_loop(listener)
      end
    end

    # ------------------------------------------------------------- sampler

    @doc """
    Samples `:sys.get_state(target, timeout_ms)` every `every_ms` until
    `stop_sampler/0`, or until the target is gone (a call it left
    unanswered by dying then counts for as long as it waited).
    """
    def start_sampler(target, every_ms, timeout_ms) do
      acc = %{samples: 0, timeouts: 0, worst_us: 0, total_us: 0}
      pid = spawn(fn -> sample(target, every_ms, timeout_ms, acc) end)
      Process.register(pid, @sampler)
      :ok
    end

    @doc "Stops the sampler: `%{samples, timeouts, worst_us, total_us}`, or nil."
    def stop_sampler do
      case Process.whereis(@sampler) do
        nil ->
          nil

        pid ->
          ref = Process.monitor(pid)
          send(pid, {:stop, self(), ref})

          receive do
            {^ref, acc} -> acc
            {:DOWN, ^ref, :process, _, _} -> nil
          end
      end
    end

    defp sample(target, every_ms, timeout_ms, acc) do
      started = System.monotonic_time(:microsecond)

      outcome =
        try do
          :sys.get_state(target, timeout_ms)
          :ok
        catch
          :exit, {:timeout, _} -> :timeout
          :exit, _ -> :gone
        end

      us = System.monotonic_time(:microsecond) - started

      case outcome do
        # Stopped (the removed node's): a call it never answered still
        # waited this long, unless the process was already gone.
        :gone when us >= 1_000 * every_ms ->
          await_stop(%{
            acc
            | samples: acc.samples + 1,
              worst_us: max(acc.worst_us, us),
              total_us: acc.total_us + us
          })

        :gone ->
          await_stop(acc)

        _ ->
          acc = %{
            acc
            | samples: acc.samples + 1,
              timeouts: acc.timeouts + if(outcome == :timeout, do: 1, else: 0),
              worst_us: max(acc.worst_us, us),
              total_us: acc.total_us + us
          }

          receive do
            {:stop, from, ref} -> send(from, {ref, acc})
          after
            every_ms -> sample(target, every_ms, timeout_ms, acc)
          end
      end
    end

    defp await_stop(acc) do
      receive do
        {:stop, from, ref} -> send(from, {ref, acc})
      end
    end

    # ------------------------------------------------ baseline: the poller

    @doc """
    Starts the poller (registered, not linked). `config`: `:topology`,
    `:list_opts` for `LibclusterDroplet.list_droplets/1`, `:interval`,
    `:health_port`, `:health_timeout`.
    """
    def start_poller(config), do: GenServer.start(__MODULE__, config, name: @poller)

    @doc "Kills the poller as a supervisor's shutdown would (it traps no exits)."
    def stop_poller do
      case Process.whereis(@poller) do
        nil -> :ok
        pid -> Process.exit(pid, :shutdown) && :ok
      end
    end

    @impl true
    def init(config) do
      state =
        Map.merge(config, %{
          connect: {:net_kernel, :connect_node, []},
          disconnect: {:erlang, :disconnect_node, []},
          list_nodes: {:erlang, :nodes, [:connected]},
          meta: MapSet.new()
        })

      # Kubernetes loads in init/1; libcluster's DNS poller after a 0 timeout.
      # Loading in a continuation is the latter: start_link returns at once.
      {:ok, state, {:continue, :load}}
    end

    @impl true
    def handle_continue(:load, state), do: {:noreply, load(state)}

    @impl true
    def handle_info(:load, state), do: {:noreply, load(state)}
    def handle_info(_, state), do: {:noreply, state}

    # Cluster.Strategy.Kubernetes.load/1 of libcluster 3.5.0, line for line.
    defp load(%{topology: topology} = state) do
      new_nodelist = MapSet.new(get_nodes(state))
      removed = MapSet.difference(state.meta, new_nodelist)

      new_nodelist =
        case Cluster.Strategy.disconnect_nodes(
               topology,
               state.disconnect,
               state.list_nodes,
               MapSet.to_list(removed)
             ) do
          :ok ->
            new_nodelist

          {:error, bad_nodes} ->
            Enum.reduce(bad_nodes, new_nodelist, fn {n, _}, acc -> MapSet.put(acc, n) end)
        end

      new_nodelist =
        case Cluster.Strategy.connect_nodes(
               topology,
               state.connect,
               state.list_nodes,
               MapSet.to_list(new_nodelist)
             ) do
          :ok ->
            new_nodelist

          {:error, bad_nodes} ->
            Enum.reduce(bad_nodes, new_nodelist, fn {n, _}, acc -> MapSet.delete(acc, n) end)
        end

      Process.send_after(self(), :load, state.interval)
      %{state | meta: new_nodelist}
    end

    # The droplets' nodes whose health-check port answers; on an API error,
    # the nodes as they are (as libcluster's pollers do).
    defp get_nodes(state) do
      case LibclusterDroplet.list_droplets(state.list_opts) do
        {:ok, listing} ->
          candidates =
            for %{name: name, address: address} when is_binary(address) <- listing.droplets,
                {:ok, node} <- [LibclusterDroplet.NodeName.build(name, address)],
                do: {node, address}

          results =
            LibclusterDroplet.probe(
              Enum.map(candidates, &elem(&1, 1)),
              state.health_port,
              timeout: state.health_timeout
            )

          for {{node, _}, {_, {:ok, _}}} <- Enum.zip(candidates, results), do: node

        {:error, _} ->
          MapSet.to_list(state.meta)
      end
    end
  end

defmodule Bench.Unreachable do
  @moduledoc false
  # For every variant and number of unreachable droplets, a fresh cell: a
  # fake API, 6 healthy nodes (real VMs, each on its own 127.1.x.y address,
  # a health-check listener in each), and the unreachable droplets, each on
  # its own address where the bench holds
  #   * a black hole on the distribution port: a listener with backlog 0
  #     whose accept queue one connection fills, so Linux drops further SYNs
  #     and a connect hangs until net_setuptime;
  #   * an open health-check port, so the droplet passes the health check.
  # Droplet names are spread so that the unreachable droplets sort between
  # the healthy ones (both variants connect in name order).
  #
  # A cell: the 5 first healthy nodes start clustering (→ mesh); a 6th
  # healthy droplet is added to the API as its node starts clustering
  # (→ join); the 5th node stops clustering and its droplet is removed, its
  # VM left running (→ removal). A sampler on each node times
  # :sys.get_state/2 on the clustering process every 50 ms throughout.
  # Times are taken from this VM's clock by asking the nodes for their
  # connections every 10 ms.

  alias Bench.Helper
  alias Bench.Unreachable.Peer
  alias LibclusterDroplet.{FakeAPI, TestCluster}

  @token "dop_v1_unreachable_bench"
  @topology :bench
  @healthy 5
  @sample_every_ms 50
  @get_state_timeout_ms 10_000
  @check_every_ms 10
  @health_timeout_ms 500
  @variant_labels %{strategy: "strategy", libcluster: "libcluster sequential"}

  def run(peer_beam) do
    started = now()
    params = params()
    Helper.header("unreachable droplets: clustering beside black-holed nodes", describe(params))

    libcluster = libcluster(params)
    variants = runnable_variants(params, libcluster)

    ctx =
      Map.merge(params, %{
        peer_beam: peer_beam,
        libcluster: libcluster,
        variants: variants,
        params_variants: params.variants
      })

    results =
      with_node_flags(ctx, fn ->
        for n <- params.counts, variant <- variants, do: measure_cell(ctx, variant, n)
      end)

    report(ctx, results)
    total_s = (now() - started) / 1000
    IO.puts("\nunreachable bench took #{Helper.num(total_s, 1)} s in all")

    Helper.write_results("unreachable", %{
      params: json_params(ctx),
      results: results,
      total_s: total_s
    })
  end

  # ----------------------------------------------------------------- params

  defp params do
    %{
      counts: env_ints("UNREACHABLE_COUNTS", [0, 4, 16]),
      variants:
        "UNREACHABLE_VARIANTS"
        |> System.get_env("strategy,libcluster")
        |> String.split(",", trim: true)
        |> Enum.map(&variant!/1),
      interval: env_int("UNREACHABLE_INTERVAL_MS", 1_000),
      cap: env_int("UNREACHABLE_CAP_MS", 30_000),
      setuptime: env_int("UNREACHABLE_SETUPTIME_S", nil),
      health_port: env_int("UNREACHABLE_HEALTH_PORT", 4_000),
      strategy_with_libcluster:
        System.get_env("UNREACHABLE_STRATEGY_WITH_LIBCLUSTER") in ["1", "true"],
      vendor:
        System.get_env("UNREACHABLE_VENDOR_DIR") ||
          Path.expand("../../shared/vendor", __DIR__),
      dist_port: TestCluster.dist_port()
    }
  end

  defp variant!(name) do
    case String.trim(name) do
      "strategy" -> :strategy
      "libcluster" -> :libcluster
      other -> raise ArgumentError, "UNREACHABLE_VARIANTS: unknown variant #{inspect(other)}"
    end
  end

  defp env_int(name, default) do
    case System.get_env(name) do
      nil -> default
      "" -> default
      value -> String.to_integer(String.trim(value))
    end
  end

  defp env_ints(name, default) do
    case System.get_env(name) do
      nil ->
        default

      value ->
        value |> String.split(",", trim: true) |> Enum.map(&String.to_integer(String.trim(&1)))
    end
  end

  defp describe(p) do
    [
      cells:
        "variants #{Enum.map_join(p.variants, ", ", &@variant_labels[&1])} x unreachable " <>
          "droplets #{Enum.join(p.counts, ", ")}; one run per cell",
      nodes:
        "#{@healthy} healthy nodes clustering, a 6th joining; each a real VM on its own 127.1.x.y",
      "polling interval": "#{Helper.int(p.interval)} ms (both variants)",
      "health check":
        "{:tcp, port: #{p.health_port}} (every droplet, unreachable ones included, passes it)",
      unreachable:
        "a listener with a full accept queue on the distribution port #{p.dist_port} of its own address",
      net_setuptime: setuptime_label(p.setuptime),
      "OTP flags": "the defaults: connect_all and global's prevent_overlapping_partitions on",
      cap: "#{Helper.int(p.cap)} ms per event; \"> cap\" when it did not happen by then",
      "get_state sampling":
        "every #{@sample_every_ms} ms on every node, timeout #{Helper.int(@get_state_timeout_ms)} ms",
      strategy:
        "Cluster.Strategy.Droplet, coordination on (default)" <>
          if(p.strategy_with_libcluster,
            do: ", real libcluster loaded (so it delegates to it)",
            else: ", libcluster not loaded (its own fallback connects)"
          ),
      "libcluster sequential":
        "a poller per node: list_droplets/1, probe/3, then libcluster 3.5.0's " <>
          "disconnect_nodes/4 and connect_nodes/4 as Cluster.Strategy.Kubernetes.load/1, " <>
          "every interval; no coordination"
    ]
  end

  defp setuptime_label(nil), do: "OTP's default, 7 s: one connect to a black hole hangs that long"
  defp setuptime_label(s), do: "#{s} s (UNREACHABLE_SETUPTIME_S; OTP's default is 7)"

  defp json_params(ctx) do
    %{
      counts: ctx.counts,
      variants: ctx.variants,
      interval_ms: ctx.interval,
      cap_ms: ctx.cap,
      net_setuptime_s: ctx.setuptime || 7,
      health_port: ctx.health_port,
      strategy_with_libcluster: ctx.strategy_with_libcluster,
      libcluster: libcluster_label(ctx.libcluster),
      sample_every_ms: @sample_every_ms,
      get_state_timeout_ms: @get_state_timeout_ms
    }
  end

  # The nodes inherit this VM's environment: ERL_AFLAGS reaches their
  # command line ahead of TestCluster's own flags.
  defp with_node_flags(ctx, fun) do
    flags = if(ctx.setuptime, do: ["-kernel net_setuptime #{ctx.setuptime}"], else: [])

    previous = System.get_env("ERL_AFLAGS")

    if flags != [],
      do:
        System.put_env("ERL_AFLAGS", Enum.join([previous | flags] |> Enum.reject(&is_nil/1), " "))

    try do
      fun.()
    after
      if previous,
        do: System.put_env("ERL_AFLAGS", previous),
        else: System.delete_env("ERL_AFLAGS")
    end
  end

  # ------------------------------------------------------------- libcluster

  # The vendored libcluster 3.5.0 (with jason and telemetry), copied to a
  # temporary directory and compiled there by a separate `elixir` process, so
  # that neither this VM nor the nodes of the strategy variant ever see its
  # modules (its Cluster.Strategy.State would meet the test stand-in, and a
  # loaded Cluster.Strategy makes the strategy delegate to it). Reused while
  # the sources and the Elixir version are the same.
  defp libcluster(params) do
    needed? = :libcluster in params.variants or params.strategy_with_libcluster
    folders = Enum.map(~w(libcluster jason telemetry), &Path.join(params.vendor, &1))

    cond do
      not needed? ->
        {:absent, "not needed by the variants run"}

      not Enum.all?(folders, &File.dir?/1) ->
        {:absent, "vendored sources not found in #{params.vendor}"}

      true ->
        build_libcluster(params.vendor, folders)
    end
  end

  defp build_libcluster(vendor, folders) do
    sources =
      for folder <- folders,
          file <- Path.wildcard(Path.join(folder, "{lib,src}/**/*.{ex,erl,hrl,src}")),
          do: {Path.relative_to(file, vendor), File.stat!(file).size, File.read!(file)}

    key = :erlang.phash2({sources, System.version(), System.otp_release()})
    dir = Path.join(System.tmp_dir!(), "libcluster_droplet_bench_libcluster_#{key}")
    ebin = Path.join(dir, "ebin")
    done = Path.join(dir, ".complete")

    if File.exists?(done) do
      IO.puts("libcluster 3.5.0: compiled earlier in #{dir}")
      {:ok, ebin}
    else
      IO.puts("compiling the vendored libcluster 3.5.0, jason and telemetry in #{dir} ...")
      File.rm_rf!(dir)
      File.mkdir_p!(ebin)
      for folder <- folders, do: File.cp_r!(folder, Path.join(dir, Path.basename(folder)))
      File.write!(Path.join(dir, "build.exs"), build_script())

      case System.cmd(System.find_executable("elixir") || "elixir", ["build.exs"],
             cd: dir,
             stderr_to_stdout: true
           ) do
        {_, 0} ->
          File.write!(done, "")
          {:ok, ebin}

        {out, status} ->
          IO.puts(out)
          {:absent, "compiling the vendored libcluster failed (exit status #{status})"}
      end
    end
  end

  defp build_script do
    ~S"""
    # libcluster's kubernetes.ex reads Mix.env() at compile time.
    Mix.start()
    Mix.env(:prod)
    ebin = Path.expand("ebin")
    Code.prepend_path(ebin)

    for erl <- Path.wildcard("telemetry/src/*.erl") do
      opts = [:report, :debug_info, outdir: String.to_charlist(ebin), i: ~c"telemetry/src"]
      {:ok, _} = :compile.file(String.to_charlist(erl), opts)
    end

    {:ok, [{:application, :telemetry, props}]} = :file.consult(~c"telemetry/src/telemetry.app.src")
    modules = for beam <- Path.wildcard("ebin/telemetry*.beam"), do: String.to_atom(Path.basename(beam, ".beam"))
    app = {:application, :telemetry, Keyword.put(props, :modules, modules)}
    File.write!("ebin/telemetry.app", :io_lib.format("~p.~n", [app]))

    files = Path.wildcard("jason/lib/**/*.ex") ++ Path.wildcard("libcluster/lib/**/*.ex")
    {:ok, _modules, _warnings} = Kernel.ParallelCompiler.compile_to_path(files, ebin)
    """
  end

  defp runnable_variants(params, libcluster) do
    case {libcluster, :libcluster in params.variants} do
      {{:absent, why}, true} ->
        IO.puts("\nBASELINE SKIPPED (libcluster sequential): #{why}")
        Enum.reject(params.variants, &(&1 == :libcluster))

      _ ->
        params.variants
    end
  end

  defp libcluster_label({:ok, ebin}), do: "3.5.0 compiled in #{ebin}"
  defp libcluster_label({:absent, why}), do: "absent: #{why}"

  # ------------------------------------------------------------------- cell

  defp measure_cell(ctx, variant, n) do
    IO.puts("\n#{@variant_labels[variant]}, #{n} unreachable: setting up ...")
    cell_started = now()
    {:ok, api} = FakeAPI.start_link(token: @token)
    layout = layout(n)
    holes = Enum.map(layout.unreachable, &black_hole(&1, ctx))

    try do
      verify_black_holes!(holes, ctx)
      nodes = start_nodes(layout.healthy, ctx, variant)

      try do
        FakeAPI.put_droplets(api, Enum.map(layout.droplets -- [layout.joiner], & &1.droplet))
        ctx = Map.merge(ctx, %{api: api, variant: variant})
        figures = run_cell(ctx, layout, nodes)

        samples =
          for node <- nodes,
              do: {node.name, TestCluster.call(node, Peer, :stop_sampler, [], 30_000)}

        result =
          Map.merge(figures, %{
            variant: variant,
            unreachable: n,
            get_state: summarize_samples(samples),
            api_requests: FakeAPI.request_count(api),
            cell_ms: now() - cell_started
          })

        IO.puts("  " <> progress_line(result))
        result
      after
        Enum.each(nodes, &TestCluster.stop/1)
      end
    after
      Enum.each(holes, &release/1)
      FakeAPI.stop(api)
    end
  end

  defp run_cell(ctx, layout, nodes) do
    originals = Enum.take(nodes, @healthy)
    joiner = List.last(nodes)
    leaver = Enum.at(nodes, @healthy - 1)

    # Mesh: the 5 first nodes start clustering.
    started = now()
    handles = Map.new(originals, &{&1.node, start_clustering(ctx, &1)})
    mesh = await(ctx.cap, fn -> mesh?(originals) end, started)
    settle(ctx)

    # Join: the 6th droplet appears as its node starts clustering.
    appeared = now()
    FakeAPI.add_droplet(ctx.api, layout.joiner.droplet)
    handles = Map.put(handles, joiner.node, start_clustering(ctx, joiner))
    join = await(ctx.cap, fn -> joined?(joiner, originals) end, appeared)
    settle(ctx)

    # Removal: the 5th node stops clustering, its droplet goes; the VM stays.
    stop_clustering(ctx, leaver, handles[leaver.node])
    removed = now()
    FakeAPI.remove_droplet(ctx.api, Enum.at(layout.healthy, @healthy - 1).droplet["id"])
    others = nodes -- [leaver]
    removal = await(ctx.cap, fn -> gone?(leaver, others) end, removed)

    # Whether it stays gone: a connect loop that started before the removal
    # could still bring it back.
    Process.sleep(ctx.interval)
    held = match?({:ok, _}, removal) and gone?(leaver, others)

    %{
      mesh_ms: figure(mesh),
      join_ms: figure(join),
      removal_ms: figure(removal),
      removal_held: held
    }
  end

  # {:ok, ms} or {:capped, cap}, as JSON.
  defp figure({:ok, ms}), do: %{ms: ms, capped: false}
  defp figure({:capped, cap}), do: %{ms: nil, capped: true, cap_ms: cap}

  defp settle(ctx), do: Process.sleep(2 * ctx.interval + :rand.uniform(ctx.interval))

  defp start_clustering(%{variant: :strategy} = ctx, node) do
    config = [
      token: @token,
      api_url: FakeAPI.url(ctx.api),
      tag_name: "web",
      polling_interval: ctx.interval,
      max_requests_per_minute: 60_000,
      health_check: {:tcp, port: ctx.health_port, timeout: @health_timeout_ms}
    ]

    sup = TestCluster.start_strategy(node, @topology, config)
    pid = TestCluster.call(node, LibclusterDroplet.TestCluster.Remote, :strategy_pid, [sup])

    :ok =
      TestCluster.call(node, Peer, :start_sampler, [pid, @sample_every_ms, @get_state_timeout_ms])

    {:strategy, sup}
  end

  defp start_clustering(%{variant: :libcluster} = ctx, node) do
    config = %{
      topology: @topology,
      list_opts: [
        token: @token,
        api_url: FakeAPI.url(ctx.api),
        tag_name: "web",
        network: :private
      ],
      interval: ctx.interval,
      health_port: ctx.health_port,
      health_timeout: @health_timeout_ms
    }

    {:ok, pid} = TestCluster.call(node, Peer, :start_poller, [config])

    :ok =
      TestCluster.call(node, Peer, :start_sampler, [pid, @sample_every_ms, @get_state_timeout_ms])

    {:libcluster, pid}
  end

  defp stop_clustering(_ctx, node, {:strategy, sup}),
    do: TestCluster.call(node, Supervisor, :stop, [sup])

  defp stop_clustering(_ctx, node, {:libcluster, _pid}),
    do: TestCluster.call(node, Peer, :stop_poller, [])

  # ------------------------------------------------------------- conditions

  # Visible connections only: a connection still being set up is not one.
  defp visible(node), do: node |> TestCluster.call(:erlang, :nodes, []) |> MapSet.new()

  defp mesh?(nodes) do
    Enum.all?(nodes, fn n ->
      connected = visible(n)
      Enum.all?(nodes, &(&1 == n or MapSet.member?(connected, &1.node)))
    end)
  end

  defp joined?(joiner, others) do
    connected = visible(joiner)
    Enum.all?(others, &MapSet.member?(connected, &1.node))
  end

  defp gone?(leaver, others) do
    Enum.all?(others, fn n ->
      leaver.node not in TestCluster.call(n, :erlang, :nodes, [:connected])
    end)
  end

  defp await(cap, fun, started) do
    cond do
      fun.() -> {:ok, now() - started}
      now() - started >= cap -> {:capped, cap}
      true -> wait_again(cap, fun, started)
    end
  end

  defp wait_again(cap, fun, started) do
    Process.sleep(@check_every_ms)
    await(cap, fun, started)
  end

  # ----------------------------------------------------------------- layout

  # 6 healthy droplets and n unreachable ones, named so that the unreachable
  # sort between the healthy (ur-01, ur-02, ...): the healthy take evenly
  # spread positions. The 6th healthy (the joiner) sorts last of the healthy,
  # so it never becomes the coordination's poller; the 5th is the one removed.
  defp layout(n) do
    total = @healthy + 1 + n
    healthy_positions = for k <- 0..@healthy, do: div((2 * k + 1) * total, 2 * (@healthy + 1))
    addresses = TestCluster.allocate_addresses(total)

    droplets =
      for {address, position} <- Enum.with_index(addresses) do
        name = "ur-" <> String.pad_leading(Integer.to_string(position + 1), 2, "0")

        %{
          name: name,
          address: address,
          healthy: position in healthy_positions,
          droplet:
            FakeAPI.droplet(id: position + 1, name: name, private_ip: address, tags: ["web"])
        }
      end

    healthy = Enum.filter(droplets, & &1.healthy)

    %{
      droplets: droplets,
      healthy: healthy,
      unreachable: Enum.reject(droplets, & &1.healthy),
      joiner: List.last(healthy)
    }
  end

  defp start_nodes(healthy, ctx, variant) do
    nodes =
      healthy
      |> Task.async_stream(fn d -> TestCluster.start_node(d.name, d.address) end,
        timeout: 60_000,
        max_concurrency: 3
      )
      |> Enum.map(fn {:ok, node} -> node end)

    Enum.each(nodes, &prepare_node(&1, ctx, variant))
    nodes
  end

  defp prepare_node(node, ctx, variant) do
    {:module, Peer} =
      TestCluster.call(node, :code, :load_binary, [
        Peer,
        ~c"unreachable_bench_peer",
        ctx.peer_beam
      ])

    case TestCluster.call(node, Peer, :listen, [node.address, ctx.health_port]) do
      {:ok, _} -> :ok
      error -> raise "cannot listen on #{node.address}:#{ctx.health_port}: #{inspect(error)}"
    end

    if variant == :libcluster or ctx.strategy_with_libcluster, do: load_libcluster(node, ctx)
  end

  defp load_libcluster(node, %{libcluster: {:ok, ebin}}) do
    true = TestCluster.call(node, :code, :add_patha, [String.to_charlist(ebin)])
    {:ok, _} = TestCluster.call(node, Application, :ensure_all_started, [:telemetry])
    {:module, _} = TestCluster.call(node, :code, :ensure_loaded, [Cluster.Strategy])
    which = node |> TestCluster.call(:code, :which, [Cluster.Strategy]) |> to_string()

    unless String.starts_with?(which, ebin),
      do: raise("Cluster.Strategy loaded from #{which} on #{node.node}, not from #{ebin}")
  end

  defp load_libcluster(_node, %{libcluster: {:absent, why}}),
    do: raise("UNREACHABLE_STRATEGY_WITH_LIBCLUSTER set but libcluster is absent: #{why}")

  # ------------------------------------------------------------ black holes

  defp black_hole(droplet, ctx) do
    {:ok, ip} = :inet.parse_address(String.to_charlist(droplet.address))
    sockets = TestCluster.black_hole(droplet.address, ctx.dist_port)

    health =
      case Peer.listen(droplet.address, ctx.health_port) do
        {:ok, pid} -> pid
        error -> raise "cannot listen on #{droplet.address}:#{ctx.health_port}: #{inspect(error)}"
      end

    %{address: droplet.address, ip: ip, sockets: sockets, health: health}
  end

  defp release(hole) do
    Enum.each(hole.sockets, &:gen_tcp.close/1)
    Process.exit(hole.health, :kill)
  end

  # A TCP connect to the distribution port must time out (SYN dropped), and
  # the health-check port must accept.
  defp verify_black_holes!([], _ctx), do: :ok

  defp verify_black_holes!(holes, ctx) do
    wrong =
      holes
      |> Task.async_stream(
        fn hole ->
          {hole.address, dist_outcome(hole.ip, ctx.dist_port, 3), open?(hole.ip, ctx.health_port)}
        end,
        max_concurrency: 32,
        timeout: 10_000
      )
      |> Enum.map(fn {:ok, result} -> result end)
      |> Enum.reject(&match?({_, :timeout, true}, &1))

    if wrong != [],
      do:
        raise(
          "black holes not behaving as such ({address, dist connect, health port open?}): #{inspect(wrong)}"
        )

    IO.puts(
      "  #{length(holes)} black holes verified: TCP connects to port #{ctx.dist_port} time out"
    )
  end

  # Now and then a connect to a full accept queue completes all the same
  # (see probes_bench.exs); the distribution handshake behind it would hang
  # anyway. So a connect that completes is tried again, up to 3 times.
  defp dist_outcome(ip, port, tries) do
    case :gen_tcp.connect(ip, port, [active: false], 300) do
      {:error, :timeout} ->
        :timeout

      {:ok, socket} when tries > 1 ->
        :gen_tcp.close(socket)
        dist_outcome(ip, port, tries - 1)

      {:ok, socket} ->
        :gen_tcp.close(socket)
        :connected

      {:error, reason} ->
        reason
    end
  end

  defp open?(ip, port) do
    case :gen_tcp.connect(ip, port, [active: false], 1_000) do
      {:ok, socket} -> :gen_tcp.close(socket) == :ok
      _ -> false
    end
  end

  # ----------------------------------------------------------------- report

  # Over the nodes, in name order; the 5th stops clustering at the removal,
  # so its samples end there.
  defp summarize_samples(named) do
    per_node =
      for {name, %{} = s} <- named,
          do: %{
            node: name,
            samples: s.samples,
            timeouts: s.timeouts,
            worst_ms: div(s.worst_us, 1000)
          }

    %{
      samples: per_node |> Enum.map(& &1.samples) |> Enum.sum(),
      timeouts: per_node |> Enum.map(& &1.timeouts) |> Enum.sum(),
      worst_ms: per_node |> Enum.map(& &1.worst_ms) |> Enum.max(fn -> 0 end),
      per_node: per_node
    }
  end

  defp progress_line(r) do
    "mesh #{show(r.mesh_ms)} ms, join #{show(r.join_ms)} ms, " <>
      "removal #{show(r.removal_ms)} ms#{held_mark(r, " (connected again after)")}, " <>
      "worst get_state #{Helper.int(r.get_state.worst_ms)} ms " <>
      "(#{r.get_state.timeouts} timeouts in #{r.get_state.samples} samples; per node " <>
      "worst ms/samples #{Enum.map_join(r.get_state.per_node, " ", &"#{&1.worst_ms}/#{&1.samples}")}), " <>
      "#{r.api_requests} API requests, " <>
      "cell #{Helper.num(r.cell_ms / 1000, 1)} s"
  end

  # A removal reached, then undone by a connect loop begun before it.
  defp held_mark(r, mark),
    do: if(r.removal_held or r.removal_ms.capped, do: "", else: mark)

  defp show(%{capped: true, cap_ms: cap}), do: "> " <> Helper.int(cap)
  defp show(%{ms: ms}), do: Helper.int(ms)

  defp report(ctx, results) do
    Helper.section(
      "target: no figure of the strategy moves by more than one interval " <>
        "(#{Helper.int(ctx.interval)} ms) from its 0-unreachable row; ms"
    )

    rows =
      for r <- results do
        [
          @variant_labels[r.variant],
          Integer.to_string(r.unreachable),
          show(r.mesh_ms),
          show(r.join_ms),
          show(r.removal_ms) <> held_mark(r, " *"),
          Helper.int(r.get_state.worst_ms),
          "#{Helper.int(r.get_state.timeouts)} / #{Helper.int(r.get_state.samples)}",
          Helper.int(r.api_requests),
          Helper.num(r.cell_ms / 1000, 1),
          verdict(r, results, ctx.interval)
        ]
      end

    Helper.table(
      [
        "variant",
        "unreachable",
        "start → mesh",
        "new → joined",
        "removal → gone",
        "worst get_state",
        "timeouts / samples",
        "API requests",
        "cell s",
        "within 1 interval of 0"
      ],
      rows
    )

    IO.puts("""
    mesh: the #{@healthy} first nodes start clustering → each visibly connected to the other #{@healthy - 1};
    joined: a 6th droplet is added as its node starts clustering → connected to all #{@healthy};
    gone: the 5th node stops clustering and its droplet is removed (its VM runs on) → no other node
      lists it in nodes(:connected) (* = it was connected again within an interval after);
    worst get_state: the slowest :sys.get_state/2 on the clustering process over all nodes and
      the whole cell (a timeout counts as #{Helper.int(@get_state_timeout_ms)} ms);
    API requests: all the fake API served during the cell (longer cells poll more).\
    """)

    with {{:absent, why}, true} <- {ctx.libcluster, :libcluster in ctx.params_variants},
         do: IO.puts("NO BASELINE ROWS: libcluster sequential was skipped: #{why}")
  end

  defp verdict(%{variant: :strategy, unreachable: 0}, _results, _interval), do: "(reference)"

  defp verdict(%{variant: :strategy} = r, results, interval) do
    case Enum.find(results, &(&1.variant == :strategy and &1.unreachable == 0)) do
      nil ->
        "no 0 row"

      base ->
        within? =
          Enum.all?([:mesh_ms, :join_ms, :removal_ms], fn key ->
            not r[key].capped and not base[key].capped and
              abs(r[key].ms - base[key].ms) <= interval
          end) and r.get_state.timeouts == 0 and
            abs(r.get_state.worst_ms - base.get_state.worst_ms) <= interval

        Helper.verdict(within?)
    end
  end

  defp verdict(_baseline, _results, _interval), do: "-"

  defp now, do: System.monotonic_time(:millisecond)
end

Bench.Unreachable.run(peer_beam)
