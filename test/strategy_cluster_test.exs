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
  # droplet name).
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
          public_ip: public_ip
        )

      FakeAPI.add_droplet(api, droplet)
      node = TestCluster.start_node(basename, node_address)
      on_exit(fn -> TestCluster.stop(node) end)
      {droplet, node}
    end
  end

  defp config(api, extra \\ []) do
    # The per-minute budget would stretch 200 ms polls to 480 ms; the fake API has no such limit.
    [
      token: @token,
      api_url: FakeAPI.url(api),
      polling_interval: @interval,
      max_requests_per_minute: 60_000
    ] ++
      extra
  end

  defp nodes(pairs), do: Enum.map(pairs, &elem(&1, 1))

  defp start_strategies(nodes, config, opts \\ []) do
    for node <- nodes, do: TestCluster.start_strategy(node, :droplets, config, opts)
  end

  defp await_mesh(nodes), do: TestCluster.await(fn -> TestCluster.full_mesh?(nodes) end, 30_000)

  # Stays true until `done` is: a property that must hold over several
  # polls, checked until they happened however long they take.
  defp holds_until(done, fun) do
    TestCluster.await(
      fn ->
        finished = done.()

        cond do
          not fun.() -> :broken
          finished -> :held
          true -> false
        end
      end,
      30_000,
      50
    ) == :held
  end

  # Stays true while the API answers `n` more requests.
  defp holds_through(api, n, fun) do
    target = FakeAPI.request_count(api) + n
    holds_until(fn -> FakeAPI.request_count(api) >= target end, fun)
  end

  defp strategy_state(node, sup) do
    pid = TestCluster.call(node, Remote, :strategy_pid, [sup])
    TestCluster.call(node, :sys, :get_state, [pid])
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

    # Each strategy, once it has applied a poll of its own or a share, wants
    # exactly the other nodes.
    for {node, sup} <- Enum.zip(nodes, sups) do
      others = Enum.sort(Enum.map(nodes, & &1.node) -- [node.node])

      TestCluster.await(fn ->
        strategy_state(node, sup).managed |> MapSet.to_list() |> Enum.sort() == others
      end)
    end
  end

  test "tag_name keeps other droplets out", %{api: api, prefix: prefix} do
    web = api |> droplets(prefix, 3, tags: ["web", "env:prod"]) |> nodes()
    [worker] = api |> droplets(prefix, 1, tags: ["worker"], offset: 3) |> nodes()

    start_strategies(web, config(api, tag_name: "web"))
    start_strategies([worker], config(api, tag_name: "worker"))
    await_mesh(web)

    assert holds_through(api, 4, fn ->
             TestCluster.connected(worker) == [] and
               Enum.all?(web, &(worker.node not in TestCluster.connected(&1)))
           end)

    assert Enum.all?(FakeAPI.requests(api), &(&1.query["tag_name"] in ["web", "worker"]))
  end

  test "name picks one droplet", %{api: api, prefix: prefix} do
    [a, b, c] = api |> droplets(prefix, 3) |> nodes()
    start_strategies([a], config(api, name: String.upcase(b.name)))

    TestCluster.await(fn -> TestCluster.connected(a) == [b.node] end)
    assert holds_through(api, 4, fn -> TestCluster.connected(a) == [b.node] end)
    refute c.node in TestCluster.connected(a)
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

    assert holds_through(api, 5, fn -> Enum.all?(nodes, &(TestCluster.connected(&1) == [])) end)
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

  test "a health check keeps out a node whose port is closed, lets it in once it opens, and drops it when it closes",
       %{api: api, prefix: prefix} do
    [a, b, c] = api |> droplets(prefix, 3) |> nodes()
    port = free_port()
    listeners = for n <- [a, b], into: %{}, do: {n.node, listen(n.address, port)}

    # c's app is not up yet: its droplet is active but nothing answers on the port.
    # A closed port is refused at once; the timeout only has to spare the
    # open ones on a busy machine.
    start_strategies([a, b], config(api, health_check: {:tcp, port: port, timeout: 2_000}))
    await_mesh([a, b])

    assert holds_through(api, 4, fn ->
             Enum.all?([a, b], &(c.node not in TestCluster.connected(&1)))
           end)

    c_listener = listen(c.address, port)
    await_mesh([a, b, c])

    :gen_tcp.close(c_listener)
    TestCluster.await(fn -> TestCluster.connected(c) == [] end, 30_000)
    assert TestCluster.full_mesh?([a, b])
    Enum.each(listeners, fn {_, l} -> :gen_tcp.close(l) end)
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

    TestCluster.await(fn -> TestCluster.connected(c) == [] end, 30_000)
    assert TestCluster.full_mesh?([a, b])
  end

  test "off and new droplets are ignored until they become active", %{api: api, prefix: prefix} do
    [a, b] = api |> droplets(prefix, 2) |> nodes()
    [{off_droplet, off}] = droplets(api, prefix, 1, status: "off", offset: 2)
    [{_, new}] = droplets(api, prefix, 1, status: "new", offset: 3)

    start_strategies([a, b], config(api))
    await_mesh([a, b])

    assert holds_through(api, 4, fn ->
             Enum.all?([a, b], &(TestCluster.connected(&1) -- [a.node, b.node] == []))
           end)

    FakeAPI.update_droplet(api, off_droplet["id"], %{"status" => "active"})
    await_mesh([a, b, off])
    refute new.node in TestCluster.connected(a)
  end

  test "an API outage keeps the cluster", %{api: api, prefix: prefix} do
    nodes = api |> droplets(prefix, 3) |> nodes()
    sups = start_strategies(nodes, config(api, max_backoff: 400))
    await_mesh(nodes)

    # The strategies keep polling through the outage, and the mesh holds
    # through four failed polls.
    FakeAPI.inject(api, {:status, 503}, times: :infinity)
    assert holds_through(api, 4, fn -> TestCluster.full_mesh?(nodes) end)

    FakeAPI.clear_faults(api)
    FakeAPI.stop(api)
    # The API is gone altogether: connection refused, still no change
    # through three more failed polls.
    failures = fn ->
      nodes |> Enum.zip(sups) |> Enum.map(fn {n, sup} -> strategy_state(n, sup).failures end)
    end

    target = Enum.sum(failures.()) + 3

    assert holds_until(fn -> Enum.sum(failures.()) >= target end, fn ->
             TestCluster.full_mesh?(nodes)
           end)
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

      assert {state.connect, state.disconnect, state.list_nodes} ==
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
    [_, _, sup_c] = start_strategies([a, b, c], config(api, coordinate: false))
    await_mesh([a, b, c])

    calls = TestCluster.call(a, Cluster.Strategy, :calls, [])

    assert {:connect_nodes, :droplets, connected} =
             Enum.find(calls, &match?({:connect_nodes, _, _}, &1))

    assert Enum.sort(connected) == Enum.sort([b.node, c.node])

    TestCluster.call(c, Supervisor, :stop, [sup_c])
    {droplet_c, _} = List.last(pairs)
    FakeAPI.remove_droplet(api, droplet_c["id"])
    TestCluster.await(fn -> TestCluster.connected(c) == [] end, 30_000)

    assert {:disconnect_nodes, :droplets, [node_c]} =
             Enum.find(
               TestCluster.call(a, Cluster.Strategy, :calls, []),
               &match?({:disconnect_nodes, _, _}, &1)
             )

    assert node_c == c.node
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

      # Every strategy now running has applied a poll since it started (the
      # poll that would disconnect a node it forgot), and the cluster polled
      # five more times.
      for {node, sup} <- Enum.zip(nodes, sups),
          do: TestCluster.await(fn -> strategy_state(node, sup).polls >= 1 end)

      count = FakeAPI.request_count(api)
      TestCluster.await(fn -> FakeAPI.request_count(api) >= count + 5 end)
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

      TestCluster.await(fn -> TestCluster.connected(c) == [] end, 30_000)
      assert TestCluster.full_mesh?([a, b])
    end
  end

  defp free_port do
    {:ok, l} = :gen_tcp.listen(0, ip: {127, 0, 0, 1})
    {:ok, port} = :inet.port(l)
    :gen_tcp.close(l)
    port
  end

  defp listen(address, port) do
    {:ok, ip} = :inet.parse_address(String.to_charlist(address))
    {:ok, l} = :gen_tcp.listen(port, ip: ip, reuseaddr: true, backlog: 128)
    l
  end
end
