defmodule LibclusterDroplet.ConsumerAppTest do
  @moduledoc false
  # The strategy as a real user's application runs it: a throwaway Mix app
  # (see LibclusterDroplet.ConsumerApp) with the real libcluster 3.5.0 and
  # the other vendored Hex packages as path dependencies beside this
  # project, which builds its NIF from source (LIBCLUSTER_DROPLET_BUILD=1,
  # cargo on the PATH, rustler among the deps), and whose
  # config/runtime.exs is the README's "## Configuration" block (plus
  # test-only keys deep-merged on top), and whose application starts
  # libcluster's Cluster.Supervisor. Every node is its own OS process with
  # OTP's defaults (connect_all, global's prevent_overlapping_partitions),
  # records every nodedown from its boot, and is never connected to this VM.
  use ExUnit.Case, async: false

  alias LibclusterDroplet.{ConsumerApp, FakeAPI, TestCluster}
  alias LibclusterDroplet.ConsumerApp.NodeAgent
  alias LibclusterDroplet.Package.FileServer

  @root Path.expand("..", __DIR__)
  @vendor ConsumerApp.vendor_dir(@root)
  @token "dop_v1_consumer_app_test_token"
  @interval 300
  # How long connecting to a black hole blocks: the nodes run with
  # net_setuptime 60 (OTP's default is 7 s), so that everything the
  # unreachable-droplets test proves happens while those connects still
  # hang, however slow the machine.
  @setup_time 60_000
  @black_holes 3

  @moduletag :consumer_app
  @moduletag timeout: 600_000

  unless File.dir?(@vendor) do
    @skip_reason "#{@vendor} is absent: the vendored Hex packages are needed to build " <>
                   "the consumer application"
    IO.puts(:stderr, "#{inspect(__MODULE__)} skipped: #{@skip_reason}")
    @moduletag skip: @skip_reason
  end

  setup_all do
    if File.dir?(@vendor) do
      # An artifact server that would record any download attempt.
      server = start_supervised!(FileServer)

      app =
        ConsumerApp.build!(
          root: @root,
          vendor: @vendor,
          polling_interval: @interval,
          env: [
            {"LIBCLUSTER_DROPLET_BUILD", "1"},
            {"LIBCLUSTER_DROPLET_BASE_URL", FileServer.url(server)},
            {"CARGO_TARGET_DIR", ConsumerApp.shared_target_dir(@root)}
          ]
        )

      on_exit(fn -> ConsumerApp.cleanup(app) end)
      note("consumer app compiled in #{app.compile_ms} ms")
      %{app: app, artifact_server: server}
    else
      :ok
    end
  end

  setup do
    api = start_supervised!({FakeAPI, token: @token})
    %{api: api, url: FakeAPI.url(api)}
  end

  test "LIBCLUSTER_DROPLET_BUILD=1 with cargo on the PATH: the NIF is built from source, " <>
         "nothing is downloaded",
       ctx do
    assert ctx.app.compile_output =~ "Compiling crate droplet_nif in release mode"
    assert FileServer.requests(ctx.artifact_server) == []
    native = Path.join(ctx.app.dir, "_build/prod/lib/libcluster_droplet/priv/native")
    assert File.ls!(native) == ["libdroplet_nif.so"]
  end

  test "mesh: three nodes running the consumer app form a full mesh", ctx do
    {nodes, ms} = start_cluster(ctx, 3)
    note("mesh of 3 formed #{ms} ms after the first node was started")

    # The README's example, verbatim, is what the nodes run on.
    assert File.read!(ctx.app.runtime_exs) =~ ctx.app.readme_block

    for node <- nodes do
      facts = TestCluster.call(node, NodeAgent, :runtime_facts, [])
      # The real libcluster drives the strategy, from the consumer's build.
      assert facts.libcluster_vsn == ~c"3.5.0"
      assert List.to_string(facts.cluster_supervisor) =~ ctx.app.dir
      assert List.to_string(facts.strategy) =~ ctx.app.dir
      # OTP's defaults: nothing overrides connect_all or prevent_overlapping_partitions.
      assert facts.connect_all == true
      assert facts.connect_all_flag == :error
      assert facts.prevent_overlapping_partitions == true
      assert facts.hidden == []

      assert [{ctx.app.topology, true, :worker, [Cluster.Strategy.Droplet]}] ==
               TestCluster.call(node, NodeAgent, :strategies, [])
    end

    assert_exact_mesh(nodes)
    assert_no_nodedowns_among(nodes)
  end

  test "join: a fourth droplet's node joins the mesh", ctx do
    {nodes, _} = start_cluster(ctx, 3)
    [address] = TestCluster.allocate_addresses(1)

    started = now()
    {_, new} = start_droplet_node(ctx, address)
    all = nodes ++ [new]
    TestCluster.await(fn -> TestCluster.full_mesh?(all) end, 15_000)
    note("4th node joined #{now() - started} ms after its droplet was listed")

    assert_exact_mesh(all)
    assert_no_nodedowns_among(all)
  end

  test "removal: a running node whose droplet goes away leaves every node, with zero collateral",
       ctx do
    {nodes, _} = start_cluster(ctx, 3, ids: true)
    # The lowest-named node polls for the cluster; remove a follower, which
    # stays up with its strategy running, as a droplet being retired does.
    {removed_id, removed} = Enum.max_by(nodes, fn {_id, node} -> node.node end)
    healthy = for {_id, node} <- nodes, node != removed, do: node
    nodes = Enum.map(nodes, &elem(&1, 1))

    removed_at = System.os_time(:millisecond)
    :ok = FakeAPI.remove_droplet(ctx.api, removed_id)

    gone = await_result(fn -> detached?(removed, healthy) end, 10_000)

    # Stays gone over several more polls (the removed node's strategy and
    # the poller's both keep polling).
    seen = FakeAPI.request_count(ctx.api)
    TestCluster.await(fn -> FakeAPI.request_count(ctx.api) >= seen + 6 end, 15_000)
    final = connections(nodes)
    detached = detached?(removed, healthy)
    downs = healthy_nodedowns(healthy, removed_at)

    note(
      "removal of #{removed.node}: detached #{inspect(gone)}, still detached #{detached}; " <>
        "connections #{inspect(final)}; all nodedowns (os ms): " <>
        inspect(Map.new(nodes, &{&1.node, ConsumerApp.nodedowns(&1)}))
    )

    # Every broken expectation at once: which ones fail tells what is wrong.
    problems =
      [
        downs != [] &&
          "healthy nodes saw nodedowns of other healthy nodes after #{removed.node} was " <>
            "removed ({observer, down, reason, ms after removal}): #{inspect(downs)}",
        !match?({:ok, _}, gone) &&
          "#{removed.node} was not disconnected from every healthy node within 10 s",
        match?({:ok, _}, gone) and !detached &&
          "#{removed.node} was disconnected from every healthy node " <>
            "(#{elem(gone, 1)} ms after removal), then connected again"
      ]
      |> Enum.filter(& &1)

    assert problems == [],
           Enum.join(problems, ";\n") <>
             ";\nconnections at the end: #{inspect(final, pretty: true)}"

    assert_exact_mesh(healthy)

    # It was asked to leave, not stopped: its strategy still runs.
    assert [{_, true, :worker, [Cluster.Strategy.Droplet]}] =
             TestCluster.call(removed, NodeAgent, :strategies, [])
  end

  test "SASL reports on, under the real Cluster.Supervisor: a strategy that fails to start and " <>
         "one that crashes print no token with the README's {:system, _} form",
       ctx do
    [bad_address, crash_address, literal_address] = TestCluster.allocate_addresses(3)
    topology = ctx.app.topology

    # A start failure: an invalid option deep-merged over the README's config.
    bad_exs = write_runtime_exs(ctx, "polling_interval: -1")
    bad = start_reporting_node(ctx, bad_address, runtime_exs: bad_exs, may_fail: true)
    log = TestCluster.call(bad, NodeAgent, :log, [])

    assert log =~
             "Child #{inspect(topology)} of Supervisor ConsumerApp.ClusterSupervisor failed to start"

    assert log =~ "invalid value for :polling_interval option"
    assert log =~ "Start Call: Cluster.Strategy.Droplet.start_link("
    assert log =~ ~s(token: {:system, "DIGITALOCEAN_TOKEN"})
    refute log =~ @token

    # A crash: the running strategy's state replaced by garbage, then its
    # next tick. Its crash report prints its state and last message; the
    # supervisor's report prints the child spec.
    node = start_reporting_node(ctx, crash_address)
    [{^topology, true, :worker, _}] = TestCluster.call(node, NodeAgent, :strategies, [])
    TestCluster.call(node, NodeAgent, :crash_strategy, [topology])

    TestCluster.await(fn ->
      TestCluster.call(node, NodeAgent, :log, []) =~ "ClusterSupervisor terminated"
    end)

    log = TestCluster.call(node, NodeAgent, :log, [])
    assert log =~ "terminating"

    assert log =~
             "Child #{inspect(topology)} of Supervisor ConsumerApp.ClusterSupervisor terminated"

    refute log =~ @token

    # The control: with a literal token in the config, the same report does
    # print it, as the README warns; so the capture above would have seen it.
    literal_exs = write_runtime_exs(ctx, "token: #{inspect(@token)}, polling_interval: -1")
    literal = start_reporting_node(ctx, literal_address, runtime_exs: literal_exs, may_fail: true)
    assert TestCluster.call(literal, NodeAgent, :log, []) =~ @token
  end

  test "HTTP 500s for several polls: the mesh stays, nobody sees a nodedown", ctx do
    {nodes, _} = start_cluster(ctx, 3)
    failures = 6
    seen = length(FakeAPI.requests(ctx.api))
    started = now()
    :ok = FakeAPI.inject(ctx.api, {:status, 500}, times: failures)

    # Every check while the API fails: the full mesh.
    breaks =
      sample_until(
        fn ->
          requests = ctx.api |> FakeAPI.requests() |> Enum.drop(seen)
          {served, after_last} = Enum.split(requests, last_index(requests, 500) + 1)

          Enum.count(served, &(&1.status == 500)) == failures and
            Enum.any?(after_last, &(&1.status == 200))
        end,
        fn -> if TestCluster.full_mesh?(nodes), do: [], else: [connections(nodes)] end,
        30_000
      )

    note("#{failures} HTTP 500s served and a poll succeeded again after #{now() - started} ms")
    assert breaks == [], "the mesh broke during the outage: #{inspect(breaks, pretty: true)}"
    assert_exact_mesh(nodes)
    assert_no_nodedowns_among(nodes)
  end

  test "unreachable droplets listed beside healthy ones: a new node still joins, nothing stalls",
       ctx do
    # Black holes get the lowest node names, so a strategy connecting one
    # node after another in name order meets them before any healthy node.
    addresses =
      (@black_holes + 4)
      |> TestCluster.allocate_addresses()
      |> Enum.sort_by(&node_name(ctx.app, &1))

    {holes, [a, b, c, new_address]} = Enum.split(addresses, @black_holes)
    {nodes, _} = start_cluster(ctx, [a, b, c])

    # Distribution connects to them hang (SYNs dropped) while their
    # health-check port answers, so every strategy wants them.
    hc_port = ctx.app.health_check_port || 4000

    for address <- holes do
      TestCluster.black_hole(address, TestCluster.dist_port())
      TestCluster.open_port(address, hc_port)
    end

    listed = length(FakeAPI.requests(ctx.api))

    for address <- holes do
      droplet = ConsumerApp.droplet(ctx.app, System.unique_integer([:positive]), address)
      :ok = FakeAPI.add_droplet(ctx.api, droplet)
    end

    # The strategies have listed the black holes at least twice.
    TestCluster.await(
      fn ->
        ctx.api
        |> FakeAPI.requests()
        |> Enum.drop(listed)
        |> Enum.count(&(&1.status == 200)) >= 2
      end,
      15_000
    )

    stalls = strategy_stalls(nodes)

    started = now()
    {_, new} = start_droplet_node(ctx, new_address)
    all = nodes ++ [new]
    # Well before connecting to the black holes one after another would end.
    join_timeout = div(@setup_time, 3)

    # Meanwhile every strategy must answer :sys.get_state/2 within 5 s (a
    # strategy that connects inline is stuck for 60 s per black hole).
    stalls =
      sample_until(
        fn -> TestCluster.full_mesh?(all) end,
        fn -> strategy_stalls(all) end,
        started + join_timeout - now(),
        stalls
      )

    joined = TestCluster.full_mesh?(all)
    join_ms = now() - started
    at_deadline = connections(all)

    # Only to say how late it was: when did it join, if ever?
    late =
      unless joined,
        do: await_result(fn -> TestCluster.full_mesh?(all) end, @setup_time)

    note(
      "with #{@black_holes} black holes listed: joined=#{joined} after #{join_ms} ms" <>
        if(late, do: ", then #{inspect(late)} more", else: "") <>
        "; unanswered get_state calls per node: #{inspect(Enum.frequencies_by(stalls, &elem(&1, 0)))}"
    )

    # A few more polls with the black holes still listed.
    seen = FakeAPI.request_count(ctx.api)

    stalls =
      sample_until(
        fn -> FakeAPI.request_count(ctx.api) >= seen + 3 end,
        fn -> strategy_stalls(all) end,
        15_000,
        stalls
      )

    downs = healthy_nodedowns(all, nil)

    problems =
      [
        !joined &&
          "#{new.node} had not joined #{join_ms} ms after its droplet was listed " <>
            "(connecting to the #{@black_holes} black holes one after another takes " <>
            "#{@black_holes} × #{@setup_time} ms); it joined #{inspect(late)} later; " <>
            "connections at #{join_ms} ms: #{inspect(at_deadline)}",
        stalls != [] &&
          "#{length(stalls)} :sys.get_state(pid, 5_000) calls to strategies got no answer " <>
            "while black holes were listed, per node: " <>
            inspect(Enum.frequencies_by(stalls, &elem(&1, 0))) <>
            "; first: #{inspect(hd(stalls))}",
        downs != [] &&
          "healthy nodes saw nodedowns of other healthy nodes: #{inspect(downs)}"
      ]
      |> Enum.filter(& &1)

    assert problems == [], Enum.join(problems, ";\n")

    assert_exact_mesh(all)
  end

  # ------------------------------------------------------------------ helpers

  # Starts consumer nodes (their droplets listed first) and awaits the full
  # mesh. `spec` is a count or the addresses. Returns the nodes (with
  # `ids: true`, `{droplet_id, node}`) and the ms until the mesh formed.
  defp start_cluster(ctx, spec, opts \\ []) do
    addresses = if is_integer(spec), do: TestCluster.allocate_addresses(spec), else: spec
    started = now()

    nodes =
      addresses
      |> Task.async_stream(&start_droplet_node(ctx, &1), timeout: 120_000, ordered: true)
      |> Enum.map(fn {:ok, {id, node}} ->
        on_exit(fn -> TestCluster.stop(node) end)
        {id, node}
      end)

    plain = Enum.map(nodes, &elem(&1, 1))
    TestCluster.await(fn -> TestCluster.full_mesh?(plain) end, 15_000)
    ms = now() - started

    # Settled: the API has answered two listings since the mesh formed, so
    # whichever strategy polls has had every node in a listing (a node that
    # joined by connecting to others itself is otherwise not yet one the
    # poller manages).
    meshed_at = now()

    TestCluster.await(
      fn ->
        ctx.api
        |> FakeAPI.requests()
        |> Enum.count(&(&1.status == 200 and &1.at_ms > meshed_at)) >= 2
      end,
      15_000
    )

    if Keyword.get(opts, :ids, false), do: {nodes, ms}, else: {plain, ms}
  end

  # Lists the droplet, then boots its node (as a droplet's VM boots after it
  # is created).
  defp start_droplet_node(ctx, address) do
    id = System.unique_integer([:positive])
    :ok = FakeAPI.add_droplet(ctx.api, ConsumerApp.droplet(ctx.app, id, address))

    node =
      ConsumerApp.start_node(ctx.app, address, @token, ctx.url,
        log_level: log_level(),
        args: ["-kernel", "net_setuptime", "#{div(@setup_time, 1_000)}"]
      )

    # Stopped by the test's on_exit, even when started in a task.
    {id, node}
  end

  # A node of the consumer app with SASL reports on and its console log
  # captured, stopped when the test ends.
  defp start_reporting_node(ctx, address, opts \\ []) do
    id = System.unique_integer([:positive])
    :ok = FakeAPI.add_droplet(ctx.api, ConsumerApp.droplet(ctx.app, id, address))

    node =
      ConsumerApp.start_node(
        ctx.app,
        address,
        @token,
        ctx.url,
        [log_level: :info, sasl_reports: true] ++ opts
      )

    on_exit(fn -> TestCluster.stop(node) end)
    node
  end

  # The app's config/runtime.exs with `config_keys` deep-merged over its
  # topology's config, in a file removed with the app's directory.
  defp write_runtime_exs(ctx, config_keys) do
    path =
      Path.join(
        Path.dirname(ctx.app.runtime_exs),
        "runtime_#{System.unique_integer([:positive])}.exs"
      )

    File.write!(path, """
    #{File.read!(ctx.app.runtime_exs)}
    config :libcluster, topologies: [#{ctx.app.topology}: [config: [#{config_keys}]]]
    """)

    path
  end

  defp node_name(app, address), do: :"#{ConsumerApp.basename(app)}@#{address}"

  defp connections(nodes), do: Map.new(nodes, &{&1.node, TestCluster.connected(&1)})

  # Whether the removed node and the healthy ones see none of each other.
  defp detached?(removed, healthy) do
    names = Enum.map(healthy, & &1.node)

    Enum.all?(TestCluster.connected(removed), &(&1 not in names)) and
      Enum.all?(healthy, &(removed.node not in TestCluster.connected(&1)))
  end

  defp assert_exact_mesh(nodes) do
    names = nodes |> Enum.map(& &1.node) |> Enum.sort()

    for node <- nodes do
      assert TestCluster.connected(node) == names -- [node.node],
             "#{node.node} is not connected to exactly the other nodes; " <>
               "connections: #{inspect(connections(nodes), pretty: true)}"
    end
  end

  defp assert_no_nodedowns_among(nodes) do
    downs = healthy_nodedowns(nodes, nil)

    assert downs == [],
           "healthy nodes saw nodedowns of other healthy nodes: #{inspect(downs, pretty: true)}"
  end

  # Every nodedown a healthy node recorded of another healthy node:
  # `{observer, down_node, reason, ms_since}` (since `since`, os time ms, or
  # the observer's boot).
  defp healthy_nodedowns(healthy, since) do
    names = Enum.map(healthy, & &1.node)

    for observer <- healthy,
        {down, reason, at} <- ConsumerApp.nodedowns(observer),
        down in names,
        do: {observer.node, down, reason, if(since, do: at - since, else: :since_boot)}
  end

  # `[{node, topology, reason, ms}]` for every strategy that did not answer
  # :sys.get_state(pid, 5_000); the nodes are asked concurrently.
  defp strategy_stalls(nodes) do
    nodes
    |> Task.async_stream(&{&1.node, ConsumerApp.strategy_answers(&1, 5_000)}, timeout: 30_000)
    |> Enum.flat_map(fn {:ok, {node, answers}} ->
      for {topology, result, ms} <- answers, result != :ok, do: {node, topology, result, ms}
    end)
  end

  defp sample_until(done, check, timeout, acc \\ []),
    do: TestCluster.sample_until(done, check, timeout, 25, acc)

  defp await_result(fun, timeout), do: TestCluster.await_result(fun, timeout)

  defp last_index(requests, status) do
    requests
    |> Enum.with_index()
    |> Enum.reduce(-1, fn {r, i}, last -> if r.status == status, do: i, else: last end)
  end

  defp now, do: System.monotonic_time(:millisecond)

  defp log_level do
    case System.get_env("CONSUMER_APP_LOG") do
      nil -> :error
      level -> String.to_existing_atom(level)
    end
  end

  # Timings, printed with CONSUMER_APP_TIMINGS=1.
  defp note(line) do
    if System.get_env("CONSUMER_APP_TIMINGS"), do: IO.puts("[consumer_app] " <> line)
  end
end
