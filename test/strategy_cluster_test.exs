defmodule Cluster.Strategy.DropletClusterTest do
  @moduledoc false
  # Real BEAM nodes, one per fake droplet, each running the strategy as
  # Cluster.Supervisor would start it, against the fake DigitalOcean API.
  use ExUnit.Case, async: true

  alias LibclusterDroplet.{FakeAPI, TestCluster}
  alias LibclusterDroplet.TestCluster.Remote

  @libcluster_stand_in """
  defmodule Cluster.Strategy do
    def start_recording do
      {:ok, _} = Agent.start(fn -> [] end, name: __MODULE__.Calls)
      :ok
    end

    def calls, do: Agent.get(__MODULE__.Calls, &Enum.reverse/1)

    def connect_nodes(topology, {m, f, a}, {lm, lf, la}, nodes) do
      Agent.update(__MODULE__.Calls, &[{:connect_nodes, topology, nodes} | &1])
      current = apply(lm, lf, la)
      for n <- nodes, n != Node.self(), n not in current, do: apply(m, f, a ++ [n])
      :ok
    end

    def disconnect_nodes(topology, {m, f, a}, {lm, lf, la}, nodes) do
      Agent.update(__MODULE__.Calls, &[{:disconnect_nodes, topology, nodes} | &1])
      current = apply(lm, lf, la)
      for n <- nodes, n != Node.self(), n in current, do: apply(m, f, a ++ [n])
      :ok
    end
  end
  """

  @moduletag :cluster
  @moduletag timeout: 120_000

  @token "dop_v1_cluster_test_token"
  @interval 200

  setup do
    {:ok, api} = FakeAPI.start_link(token: @token)
    {:ok, api: api, prefix: "c#{System.unique_integer([:positive])}"}
  end

  # Starts `n` nodes named "<prefix>-<i>" on fresh addresses and adds their
  # droplets to the API. Options: :status, :tags, :network (which address is
  # the node's: :private or :public), :basename (node name part, default the
  # droplet name), and the droplet's :region, :vpc_uuid and :gpu.
  defp droplets(api, prefix, n, opts \\ []) do
    network = Keyword.get(opts, :network, :private)
    offset = Keyword.get(opts, :offset, 0)

    for i <- (offset + 1)..(offset + n) do
      [node_address, other_address] = TestCluster.allocate_addresses(2)
      name = "#{prefix}-#{i}"
      basename = Keyword.get(opts, :basename, name)

      {private_ip, public_ip} =
        if network == :private,
          do: {node_address, other_address},
          else: {other_address, node_address}

      droplet =
        FakeAPI.droplet(
          id: :erlang.phash2({prefix, i}, 1_000_000_000),
          name: name,
          status: Keyword.get(opts, :status, "active"),
          tags: Keyword.get(opts, :tags, ["web"]),
          private_ip: private_ip,
          public_ip: public_ip,
          region: Keyword.get(opts, :region, "nyc3"),
          vpc_uuid: Keyword.get(opts, :vpc_uuid, "760e09ef-dc84-11e8-981e-3cfdfeaae000"),
          gpu: Keyword.get(opts, :gpu, false)
        )

      FakeAPI.add_droplet(api, droplet)

      node =
        TestCluster.start_node(basename, node_address, Keyword.take(opts, [:log_level, :args]))

      on_exit(fn -> TestCluster.stop(node) end)
      {droplet, node}
    end
  end

  defp config(api, extra \\ []) do
    # The per-minute budget would stretch 200 ms polls to 480 ms; the fake API has no such limit.
    Keyword.merge(
      [
        token: @token,
        api_url: FakeAPI.url(api),
        polling_interval: @interval,
        max_requests_per_minute: 60_000
      ],
      extra
    )
  end

  defp nodes(pairs), do: Enum.map(pairs, &elem(&1, 1))

  defp start_strategies(nodes, config, opts \\ []) do
    for node <- nodes, do: TestCluster.start_strategy(node, :droplets, config, opts)
  end

  defp await_mesh(nodes), do: TestCluster.await(fn -> TestCluster.full_mesh?(nodes) end, 15_000)

  # Stays true for `ms`: a property that must hold over several polls.
  defp holds_for(ms, fun) do
    deadline = System.monotonic_time(:millisecond) + ms

    Stream.repeatedly(fn ->
      Process.sleep(50)
      fun.()
    end)
    |> Enum.reduce_while(true, fn ok, _ ->
      cond do
        not ok -> {:halt, false}
        System.monotonic_time(:millisecond) > deadline -> {:halt, true}
        true -> {:cont, true}
      end
    end)
  end

  test "a full mesh forms, started exactly as Cluster.Supervisor starts a strategy", %{
    api: api,
    prefix: prefix
  } do
    nodes = api |> droplets(prefix, 4) |> nodes()

    # Cluster.Supervisor's child: {strategy, :start_link, [[%Cluster.Strategy.State{}]]} with default MFAs.
    start_strategies(nodes, config(api))
    await_mesh(nodes)

    for node <- nodes do
      assert TestCluster.connected(node) == Enum.sort(Enum.map(nodes, & &1.node) -- [node.node])
    end
  end

  test "the strategy never counts its own node among the nodes to connect", %{
    api: api,
    prefix: prefix
  } do
    nodes = api |> droplets(prefix, 3) |> nodes()
    sups = start_strategies(nodes, config(api))
    await_mesh(nodes)
    Process.sleep(2 * @interval)

    for {node, sup} <- Enum.zip(nodes, sups) do
      [{:droplets, pid, :worker, _}] = TestCluster.call(node, Supervisor, :which_children, [sup])
      %{members: %{managed: managed}} = TestCluster.call(node, :sys, :get_state, [pid])

      assert MapSet.to_list(managed) |> Enum.sort() ==
               Enum.sort(Enum.map(nodes, & &1.node) -- [node.node])
    end
  end

  test "tag_name keeps other droplets out", %{api: api, prefix: prefix} do
    web = api |> droplets(prefix, 3, tags: ["web", "env:prod"]) |> nodes()
    [worker] = api |> droplets(prefix, 1, tags: ["worker"], offset: 3) |> nodes()

    start_strategies(web, config(api, tag_name: "web"))
    start_strategies([worker], config(api, tag_name: "worker"))
    await_mesh(web)

    assert holds_for(4 * @interval, fn ->
             TestCluster.connected(worker) == [] and
               Enum.all?(web, &(worker.node not in TestCluster.connected(&1)))
           end)

    assert Enum.all?(FakeAPI.requests(api), &(&1.query["tag_name"] in ["web", "worker"]))
  end

  # Waits until the API has logged `more` requests from now on: a property
  # checked afterwards held over those polls, proven by the API's own count
  # rather than the clock.
  defp after_requests(api, more) do
    count = FakeAPI.request_count(api)
    TestCluster.await(fn -> FakeAPI.request_count(api) >= count + more end, 20_000)
  end

  test "vpc: :self: droplets of two VPCs sharing a tag cluster only within their own VPC", %{
    api: api,
    prefix: prefix
  } do
    vpc_a = "760e09ef-dc84-11e8-981e-3cfdfeaae000"
    vpc_b = "5a4981aa-9653-4bd1-bef5-d6bff52042e4"
    in_a = api |> droplets(prefix, 3, vpc_uuid: vpc_a) |> nodes()
    in_b = api |> droplets(prefix, 2, vpc_uuid: vpc_b, offset: 3) |> nodes()

    sups = start_strategies(in_a ++ in_b, config(api, tag_name: "web", vpc: :self))
    await_mesh(in_a)
    await_mesh(in_b)
    # Each strategy listed every droplet, both VPCs, again and again.
    after_requests(api, 2 * length(sups))

    for n <- in_a,
        do: assert(TestCluster.connected(n) == Enum.sort(Enum.map(in_a -- [n], & &1.node)))

    for n <- in_b,
        do: assert(TestCluster.connected(n) == Enum.sort(Enum.map(in_b -- [n], & &1.node)))

    for {n, sup} <- Enum.zip(in_a ++ in_b, sups) do
      own = if n in in_a, do: in_a, else: in_b
      assert Enum.sort(managed_by(n, sup)) == Enum.sort(Enum.map(own -- [n], & &1.node))
    end

    assert Enum.all?(FakeAPI.requests(api), &(&1.query["tag_name"] == "web"))
  end

  test "several tags, regions and GPU droplets: exactly the droplets meant cluster", %{
    api: api,
    prefix: prefix
  } do
    web = api |> droplets(prefix, 2, tags: ["web"], region: "nyc3") |> nodes()
    [api_node] = api |> droplets(prefix, 1, tags: ["api"], region: "sfo3", offset: 2) |> nodes()
    [gpu] = api |> droplets(prefix, 1, tags: ["web"], gpu: true, offset: 3) |> nodes()
    # Outside the filters: another region, another tag.
    [far] = api |> droplets(prefix, 1, tags: ["web"], region: "ams3", offset: 4) |> nodes()
    [db] = api |> droplets(prefix, 1, tags: ["db"], offset: 5) |> nodes()

    meant = web ++ [api_node, gpu]
    outside = [far, db]

    config = config(api, tag_name: ["web", "api"], regions: ["nyc3", "sfo3"], gpus: true)
    start_strategies(meant ++ outside, config)
    await_mesh(meant)
    after_requests(api, 3 * length(meant ++ outside))

    assert Enum.all?(outside, &(TestCluster.connected(&1) == []))
    assert TestCluster.full_mesh?(meant)
    for n <- meant, o <- outside, do: refute(o.node in TestCluster.connected(n))

    # Three listings per poll, as the API allows them: one per tag, and the
    # GPU droplets (type=gpus, never with tag_name).
    queries = FakeAPI.requests(api) |> Enum.map(&Map.take(&1.query, ["tag_name", "type"]))

    assert Enum.uniq(queries) |> Enum.sort() ==
             Enum.sort([%{"tag_name" => "web"}, %{"tag_name" => "api"}, %{"type" => "gpus"}])
  end

  test "name picks one droplet", %{api: api, prefix: prefix} do
    [a, b, c] = api |> droplets(prefix, 3) |> nodes()
    # a is not the droplet it selects, so it must not insist on being listed.
    start_strategies([a], config(api, name: String.upcase(b.name), require_listed: false))

    TestCluster.await(fn -> TestCluster.connected(a) == [b.node] end)
    assert holds_for(4 * @interval, fn -> TestCluster.connected(a) == [b.node] end)
    refute c.node in TestCluster.connected(a)
  end

  test "a node whose own name is not selected joins no one and says so once; require_listed: false lets it join",
       %{api: api, prefix: prefix} do
    [a, b] = api |> droplets(prefix, 2) |> nodes()
    # Runs on a droplet, but under a name the strategy does not compute for it.
    [address] = TestCluster.allocate_addresses(1)
    stray = TestCluster.start_node("#{prefix}-stray", address, log_level: :warning)
    on_exit(fn -> TestCluster.stop(stray) end)

    FakeAPI.add_droplet(
      api,
      FakeAPI.droplet(id: 7_777, name: "#{prefix}-other", private_ip: address)
    )

    TestCluster.call(stray, Remote, :capture_warnings, [])

    start_strategies([a, b], config(api))
    [stray_sup] = start_strategies([stray], config(api))
    await_mesh([a, b])

    assert holds_for(4 * @interval, fn -> TestCluster.connected(stray) == [] end)
    pid = TestCluster.call(stray, Remote, :strategy_pid, [stray_sup])

    assert %{members: %{listed?: false, managed: managed}} =
             TestCluster.call(stray, :sys, :get_state, [pid])

    assert MapSet.size(managed) == 0

    warnings =
      stray |> TestCluster.call(Remote, :warnings, []) |> Enum.filter(&(&1 =~ "not among"))

    assert [warning] = warnings
    assert warning =~ inspect(stray.node)
    assert warning =~ "#{prefix}-other@#{address}"

    TestCluster.call(stray, Supervisor, :stop, [stray_sup])
    start_strategies([stray], config(api, require_listed: false))
    await_mesh([a, b, stray])
  end

  test "node_basename names every node the same, on each droplet's address", %{
    api: api,
    prefix: prefix
  } do
    nodes = api |> droplets(prefix, 3, basename: "app") |> nodes()
    assert Enum.all?(nodes, &String.starts_with?(Atom.to_string(&1.node), "app@"))
    start_strategies(nodes, config(api, node_basename: "app"))
    await_mesh(nodes)
  end

  test "network: :private connects over the private addresses", %{api: api, prefix: prefix} do
    nodes = api |> droplets(prefix, 3, network: :private) |> nodes()
    start_strategies(nodes, config(api, network: :private))
    await_mesh(nodes)
  end

  test "network: :public connects over the public addresses", %{api: api, prefix: prefix} do
    nodes = api |> droplets(prefix, 3, network: :public) |> nodes()
    start_strategies(nodes, config(api, network: :public))
    await_mesh(nodes)
  end

  test "the wrong network finds nobody", %{api: api, prefix: prefix} do
    nodes = api |> droplets(prefix, 2, network: :public) |> nodes()
    start_strategies(nodes, config(api, network: :private))

    assert holds_for(5 * @interval, fn -> Enum.all?(nodes, &(TestCluster.connected(&1) == [])) end)
  end

  test "IPv6: nodes on ::1 with inet6_tcp", %{api: api, prefix: prefix} do
    nodes =
      for i <- 1..3 do
        name = "#{prefix}-v6-#{i}"
        [v4] = TestCluster.allocate_addresses(1)

        FakeAPI.add_droplet(
          api,
          FakeAPI.droplet(
            id: 900_000 + i,
            name: name,
            private_ip: v4,
            public_ip: v4,
            ipv6: "::1",
            tags: ["web"]
          )
        )

        node = TestCluster.start_node(name, "::1", ipv6: true)
        on_exit(fn -> TestCluster.stop(node) end)
        node
      end

    start_strategies(nodes, config(api, network: :public, ipv6: true))
    await_mesh(nodes)
    assert Enum.all?(nodes, &(&1.node |> Atom.to_string() |> String.ends_with?("@::1")))
  end

  test "a health check keeps out a node whose port is closed, lets it in once it opens, and stops managing it after 3 failed probes in a row, without a nodedown",
       %{api: api, prefix: prefix} do
    [a, b, c] = api |> droplets(prefix, 3) |> nodes()
    port = TestCluster.free_port()
    listeners = for n <- [a, b], into: %{}, do: {n.node, listen(n.address, port)}

    # c's app is not up yet: its droplet is active but nothing answers on the port.
    # Probes a second apart: the first failed one is seen before the third.
    [sup_a, sup_b] =
      start_strategies(
        [a, b],
        # A closed port is refused at once; the timeout only has to spare
        # the open ones on a busy machine.
        config(api, health_check: {:tcp, port: port, timeout: 2_000}, polling_interval: 1_000)
      )

    await_mesh([a, b])

    assert holds_for(4 * @interval, fn ->
             Enum.all?([a, b], &(c.node not in TestCluster.connected(&1)))
           end)

    c_listener = listen(c.address, port)
    await_mesh([a, b, c])
    Enum.each([a, b, c], &TestCluster.call(&1, Remote, :start_nodedown_recorder, []))

    # One failed probe does not cost c its place...
    :gen_tcp.close(c_listener)

    strategies =
      for {n, sup} <- [{a, sup_a}, {b, sup_b}],
          do: {n, TestCluster.call(n, Remote, :strategy_pid, [sup])}

    state = fn {n, pid} -> TestCluster.call(n, :sys, :get_state, [pid]) end

    first =
      TestCluster.await(fn ->
        states = Enum.map(strategies, state)

        Enum.any?(
          states,
          &(Map.has_key?(&1.members.strikes, c.node) or c.node not in &1.members.managed)
        ) and
          states
      end)

    assert Enum.all?(first, &(c.node in &1.members.managed)),
           "c was dropped on its first failed probe"

    # ...three in a row do: c is no longer managed (not reconnected if it
    # drops), but probes are each node's own view, so nobody evicts it.
    TestCluster.await(
      fn -> Enum.all?(strategies, &(c.node not in state.(&1).members.managed)) end,
      20_000
    )

    assert holds_for(3 * @interval, fn -> TestCluster.full_mesh?([a, b, c]) end)

    for n <- [a, b, c] do
      assert TestCluster.call(n, Remote, :nodedowns, []) == []
    end

    Enum.each(listeners, fn {_, l} -> :gen_tcp.close(l) end)
  end

  test "droplets whose distribution port drops packets never hold up the strategy", %{
    api: api,
    prefix: prefix
  } do
    port = TestCluster.free_port()
    # A connect to a hole stays pending for a minute: long enough that
    # everything below happens while all four are in flight.
    [a, b, c] = api |> droplets(prefix, 3, args: ["-kernel", "net_setuptime", "60"]) |> nodes()

    listeners = for n <- [a, b, c], do: listen(n.address, port)

    # Sorted before the healthy nodes, answering the health check, but
    # dropping every SYN on the distribution port: a missing firewall rule.
    holes =
      for i <- 1..4 do
        [address] = TestCluster.allocate_addresses(1)
        sockets = TestCluster.black_hole(address, TestCluster.dist_port())
        health = listen(address, port)

        FakeAPI.add_droplet(
          api,
          FakeAPI.droplet(id: 800_000 + i, name: "#{prefix}-0#{i}", private_ip: address)
        )

        {:"#{prefix}-0#{i}@#{address}", [health | sockets]}
      end

    config = config(api, health_check: {:tcp, port: port, timeout: 500})
    [sup_a, _] = start_strategies([a, b], config)
    await_mesh([a, b])
    pid_a = TestCluster.call(a, Remote, :strategy_pid, [sup_a])

    # The strategy answers at once, again and again, while the holes' connects hang.
    for _ <- 1..20 do
      state = TestCluster.call(a, :sys, :get_state, [pid_a, 5_000])
      assert state.schedule.failures == 0
      Process.sleep(25)
    end

    # A new droplet joins while they still hang.
    start_strategies([c], config)
    await_mesh([a, b, c])
    state = TestCluster.call(a, :sys, :get_state, [pid_a, 5_000])
    pending = state.members.connector |> LibclusterDroplet.Connector.nodes() |> MapSet.new()
    assert MapSet.new(holes, &elem(&1, 0)) |> MapSet.subset?(pending)
    assert state.schedule.polls >= 3, "polling went on: #{state.schedule.polls} polls"

    for {_, sockets} <- holes, s <- sockets, do: :gen_tcp.close(s)
    Enum.each(listeners, &:gen_tcp.close/1)
  end

  for who <- [:follower, :leader] do
    test "removing a running #{who}'s droplet: it leaves, and no healthy node sees a nodedown",
         %{api: api, prefix: prefix} do
      pairs = droplets(api, prefix, 4, log_level: :info)
      nodes = nodes(pairs)
      Enum.each(nodes, &TestCluster.call(&1, Remote, :capture_warnings, [:info]))

      sups =
        nodes
        |> Enum.zip(start_strategies(nodes, config(api)))
        |> Map.new(fn {n, s} -> {n.node, s} end)

      await_mesh(nodes)
      Enum.each(nodes, &TestCluster.call(&1, Remote, :start_nodedown_recorder, []))

      # Settled: the lowest-named node polls for the cluster, the others follow it.
      [poller | followers] = nodes

      for n <- followers do
        TestCluster.await(fn ->
          pid = strategy(n, sups[n.node])
          TestCluster.call(n, :sys, :get_state, [pid]).coordination.leader == poller.node
        end)
      end

      {{droplet, gone}, healthy} =
        case unquote(who) do
          :leader -> {hd(pairs), nodes -- [elem(hd(pairs), 1)]}
          :follower -> {List.last(pairs), nodes -- [elem(List.last(pairs), 1)]}
        end

      FakeAPI.remove_droplet(api, droplet["id"])

      # Settled: no healthy strategy manages it any more, and it is connected to no one.
      TestCluster.await(fn ->
        TestCluster.connected(gone) == [] and
          Enum.all?(healthy, &(gone.node not in TestCluster.connected(&1))) and
          Enum.all?(healthy, &(gone.node not in managed_by(&1, sups[&1.node])))
      end)

      # It stays out: its own strategy, polling alone now, no longer finds
      # itself selected. (While the cluster settles, global may connect it
      # back for a moment; it then leaves again.)
      gone_sup = sups[gone.node]
      polls = TestCluster.call(gone, :sys, :get_state, [strategy(gone, gone_sup)]).schedule.polls

      TestCluster.await(fn ->
        TestCluster.call(gone, :sys, :get_state, [strategy(gone, gone_sup)]).schedule.polls >=
          polls + 3
      end)

      TestCluster.await(fn -> TestCluster.connected(gone) == [] end)
      assert TestCluster.full_mesh?(healthy)
      assert_no_healthy_nodedown(healthy, gone)

      # The poller finds itself gone first and leaves by itself (a follower
      # may learn it from the poller's share, or be asked to leave).
      if unquote(who) == :leader do
        assert gone
               |> TestCluster.call(Remote, :warnings, [])
               |> Enum.any?(&(&1 =~ "left the cluster"))
      end

      # Connected back (as global may do while a cluster settles), it leaves
      # again by itself, still without a nodedown among the others.
      true = TestCluster.call(hd(healthy), :net_kernel, :connect_node, [gone.node])
      TestCluster.await(fn -> TestCluster.connected(gone) == [] end)
      assert TestCluster.full_mesh?(healthy)

      assert_no_healthy_nodedown(healthy, gone)
    end
  end

  defp strategy(node, sup), do: TestCluster.call(node, Remote, :strategy_pid, [sup])

  defp assert_no_healthy_nodedown(healthy, gone) do
    downs = for n <- healthy, do: {n.node, TestCluster.call(n, Remote, :nodedowns, [])}

    for {node, nodedowns} <- downs do
      assert Enum.reject(nodedowns, &(&1 == gone.node)) == [],
             "#{node} saw a healthy node go down: #{inspect(downs)}; gone: #{gone.node}"
    end
  end

  test "a droplet removed from the API is disconnected", %{api: api, prefix: prefix} do
    pairs = droplets(api, prefix, 3)
    [a, b, c] = nodes(pairs)
    [_, _, sup_c] = start_strategies([a, b, c], config(api))
    await_mesh([a, b, c])

    # c is being decommissioned: its app stops clustering, its droplet goes away.
    TestCluster.call(c, Supervisor, :stop, [sup_c])
    {droplet_c, _} = List.last(pairs)
    FakeAPI.remove_droplet(api, droplet_c["id"])

    TestCluster.await(fn -> TestCluster.connected(c) == [] end)
    assert TestCluster.full_mesh?([a, b])
  end

  test "off and new droplets are ignored until they become active", %{api: api, prefix: prefix} do
    [a, b] = api |> droplets(prefix, 2) |> nodes()
    [{off_droplet, off}] = droplets(api, prefix, 1, status: "off", offset: 2)
    [{_, new}] = droplets(api, prefix, 1, status: "new", offset: 3)

    start_strategies([a, b], config(api))
    await_mesh([a, b])

    assert holds_for(4 * @interval, fn ->
             Enum.all?([a, b], &(TestCluster.connected(&1) -- [a.node, b.node] == []))
           end)

    FakeAPI.update_droplet(api, off_droplet["id"], %{"status" => "active"})
    await_mesh([a, b, off])
    refute new.node in TestCluster.connected(a)
  end

  test "an API outage keeps the cluster", %{api: api, prefix: prefix} do
    nodes = api |> droplets(prefix, 3) |> nodes()
    start_strategies(nodes, config(api, max_backoff: 400))
    await_mesh(nodes)

    FakeAPI.inject(api, {:status, 503}, times: :infinity)
    count = FakeAPI.request_count(api)
    assert holds_for(8 * @interval, fn -> TestCluster.full_mesh?(nodes) end)

    assert FakeAPI.request_count(api) > count + 3,
           "the strategies kept polling through the outage"

    FakeAPI.clear_faults(api)
    FakeAPI.stop(api)
    # The API is gone altogether: connection refused, still no change.
    assert holds_for(6 * @interval, fn -> TestCluster.full_mesh?(nodes) end)
  end

  test "without libcluster: the keyword child spec with the default MFAs", %{
    api: api,
    prefix: prefix
  } do
    nodes = api |> droplets(prefix, 3) |> nodes()

    for node <- nodes do
      {:ok, sup} =
        TestCluster.call(node, Remote, :start_keyword_strategy, [:droplets, config(api)])

      [{Cluster.Strategy.Droplet, pid, :worker, _}] =
        TestCluster.call(node, Supervisor, :which_children, [sup])

      state = TestCluster.call(node, :sys, :get_state, [pid])

      assert {state.members.connect, state.members.disconnect, state.members.list_nodes} ==
               {{:net_kernel, :connect_node, []}, {:erlang, :disconnect_node, []},
                {:erlang, :nodes, [:connected]}}
    end

    await_mesh(nodes)
  end

  test "with libcluster loaded, connecting and disconnecting go through Cluster.Strategy", %{
    api: api,
    prefix: prefix
  } do
    pairs = droplets(api, prefix, 3)
    [a, b, c] = nodes(pairs)
    # A stand-in with libcluster 3.5's connect_nodes/4 and disconnect_nodes/4
    # contract (../shared/libcluster-contract.md) that also records its calls.
    TestCluster.call(a, Code, :compile_string, [@libcluster_stand_in])
    TestCluster.call(a, Cluster.Strategy, :start_recording, [])
    # Only a and c run the strategy, so only a removes c.
    [_, sup_c] = start_strategies([a, c], config(api, coordinate: false))
    await_mesh([a, b, c])

    calls = TestCluster.call(a, Cluster.Strategy, :calls, [])
    connects = for {:connect_nodes, :droplets, nodes} <- calls, do: nodes

    # One call per node, each from its own task, and only for nodes not yet
    # connected: b runs no strategy, so a's call is what connects it (c may
    # have connected to a first).
    assert Enum.all?(connects, &(length(&1) == 1))
    assert b.node in List.flatten(connects)
    assert Enum.all?(List.flatten(connects), &(&1 in [b.node, c.node]))

    # c cannot leave by itself (its rpc server is stuck). It is asked again
    # and again, and a warns once, but never cuts it off from its side:
    # global would then make b drop a (prevent_overlapping_partitions).
    Enum.each([a, b], &TestCluster.call(&1, Remote, :start_nodedown_recorder, []))
    TestCluster.call(a, Logger, :configure, [[level: :warning]])
    TestCluster.call(a, Remote, :capture_warnings, [])
    TestCluster.call(c, Supervisor, :stop, [sup_c])
    TestCluster.call(c, :sys, :suspend, [:rex])
    {droplet_c, _} = List.last(pairs)
    FakeAPI.remove_droplet(api, droplet_c["id"])

    TestCluster.await(
      fn ->
        Enum.any?(TestCluster.call(a, Remote, :warnings, []), &(&1 =~ "still connected after"))
      end,
      30_000
    )

    calls = TestCluster.call(a, Cluster.Strategy, :calls, [])
    assert for({:disconnect_nodes, :droplets, nodes} <- calls, do: nodes) == []
    assert c.node in TestCluster.connected(a)

    # Once c can answer, it leaves at the next request, alone.
    TestCluster.call(c, :sys, :resume, [:rex])
    TestCluster.await(fn -> TestCluster.connected(c) == [] end, 30_000)
    assert TestCluster.full_mesh?([a, b])

    for n <- [a, b],
        do: TestCluster.await(fn -> TestCluster.call(n, Remote, :nodedowns, []) == [c.node] end)
  end

  describe "restarts" do
    test "a killed strategy is restarted and picks up the cluster without disconnecting anyone",
         %{api: api, prefix: prefix} do
      nodes = api |> droplets(prefix, 3) |> nodes()
      sups = start_strategies(nodes, config(api))
      await_mesh(nodes)

      Enum.each(
        nodes,
        &TestCluster.call(&1, LibclusterDroplet.TestCluster.Remote, :start_nodedown_recorder, [])
      )

      for _round <- 1..3, {node, sup} <- Enum.zip(nodes, sups) do
        old = TestCluster.call(node, LibclusterDroplet.TestCluster.Remote, :strategy_pid, [sup])
        TestCluster.call(node, Process, :exit, [old, :kill])

        TestCluster.await(fn ->
          new = TestCluster.call(node, LibclusterDroplet.TestCluster.Remote, :strategy_pid, [sup])
          new != nil and new != old
        end)
      end

      Process.sleep(5 * @interval)
      assert TestCluster.full_mesh?(nodes)

      for node <- nodes do
        assert TestCluster.call(node, LibclusterDroplet.TestCluster.Remote, :nodedowns, []) == []
      end
    end

    test "a restarted strategy still disconnects a droplet its previous incarnation connected",
         %{api: api, prefix: prefix} do
      pairs = droplets(api, prefix, 3)
      [a, b, c] = nodes(pairs)
      [sup_a, _, sup_c] = start_strategies([a, b, c], config(api))
      await_mesh([a, b, c])

      TestCluster.call(c, Supervisor, :stop, [sup_c])
      old = TestCluster.call(a, LibclusterDroplet.TestCluster.Remote, :strategy_pid, [sup_a])
      TestCluster.call(a, Process, :exit, [old, :kill])
      {droplet_c, _} = List.last(pairs)
      FakeAPI.remove_droplet(api, droplet_c["id"])

      TestCluster.await(fn -> TestCluster.connected(c) == [] end)
      assert TestCluster.full_mesh?([a, b])
    end
  end

  # The nodes the strategy started under `sup` on `node` manages.
  defp managed_by(node, sup) do
    pid = TestCluster.call(node, Remote, :strategy_pid, [sup])
    TestCluster.call(node, :sys, :get_state, [pid]).members.managed
  end

  defp listen(address, port) do
    {:ok, ip} = :inet.parse_address(String.to_charlist(address))
    {:ok, l} = :gen_tcp.listen(port, ip: ip, reuseaddr: true, backlog: 128)
    l
  end
end
