# make demo: the fake DigitalOcean API plus five real BEAM nodes, each
# running Cluster.Strategy.Droplet, narrated as the cluster forms, loses a
# droplet and rides out an API outage. Ends by itself with exit status 0.

defmodule Demo do
  alias LibclusterDroplet.{FakeAPI, TestCluster}

  @token "dop_v1_demo_token_not_a_secret"
  @interval 500
  @nodes 5

  def run do
    started = now()
    Process.put(:t0, started)
    banner("libcluster_droplet demo")

    {:ok, api} = FakeAPI.start_link(token: @token)
    addresses = TestCluster.allocate_addresses(@nodes + 2)
    {node_addrs, [db_addr, off_addr]} = Enum.split(addresses, @nodes)

    droplets =
      for {addr, i} <- Enum.with_index(node_addrs, 1) do
        FakeAPI.droplet(
          id: 3_164_440 + i,
          name: "web-#{i}",
          tags: ["web", "env:demo"],
          private_ip: addr,
          public_ip: public_of(addr)
        )
      end

    others = [
      FakeAPI.droplet(
        id: 3_164_500,
        name: "db-1",
        tags: ["db"],
        private_ip: db_addr,
        public_ip: public_of(db_addr)
      ),
      FakeAPI.droplet(
        id: 3_164_501,
        name: "web-old",
        status: "off",
        tags: ["web"],
        private_ip: off_addr
      )
    ]

    FakeAPI.put_droplets(api, droplets ++ others)

    say("fake DigitalOcean API on #{FakeAPI.url(api)}")

    say(
      "droplets: #{Enum.map_join(droplets, ", ", & &1["name"])} (tag web), db-1 (tag db), web-old (tag web, off)"
    )

    nodes =
      for {droplet, addr} <- Enum.zip(droplets, node_addrs) do
        TestCluster.start_node(droplet["name"], addr, log_level: :warning)
      end

    say(
      "started #{length(nodes)} BEAM nodes, one per droplet: #{Enum.map_join(nodes, ", ", &inspect(&1.node))}"
    )

    config = [
      token: @token,
      api_url: FakeAPI.url(api),
      tag_name: "web",
      polling_interval: @interval,
      max_backoff: 2_000
    ]

    section(
      "1. every node starts Cluster.Strategy.Droplet (tag_name: \"web\", polling_interval: #{@interval})"
    )

    t_start = now()
    for node <- nodes, do: TestCluster.start_strategy(node, :droplets, config)
    watcher = watch(api, nodes)

    wait_until(fn -> TestCluster.full_mesh?(nodes) end, 20_000)
    mesh_ms = now() - t_start
    Process.sleep(100)

    say(
      "FULL MESH: #{length(nodes)} nodes, each connected to the #{length(nodes) - 1} others, #{mesh_ms} ms after start"
    )

    say("(db-1 has another tag and web-old is off: both ignored)")

    section("2. one poller for the whole cluster")
    Process.sleep(2 * @interval)
    before = FakeAPI.request_count(api)
    window = 3_000
    Process.sleep(window)
    polled = FakeAPI.request_count(api) - before

    say(
      "#{polled} API requests in #{window} ms: web-1 (the lowest name) polls every #{@interval} ms and shares " <>
        "what it finds; the others follow, where #{length(nodes)} independent pollers would make " <>
        "#{div(length(nodes) * window, @interval)}"
    )

    section("3. web-5's droplet is destroyed while its app still runs")
    gone = List.last(nodes)
    rest = Enum.drop(nodes, -1)
    Enum.each(rest, &TestCluster.call(&1, TestCluster.Remote, :start_nodedown_recorder, []))
    FakeAPI.remove_droplet(api, List.last(droplets)["id"])
    t_remove = now()
    wait_until(fn -> TestCluster.connected(gone) == [] end, 10_000)
    removal_ms = now() - t_remove
    # Let the watcher print the last disconnections first.
    Process.sleep(100)

    say(
      "web-5 left the cluster #{removal_ms} ms after its droplet disappeared: asked to leave " <>
        "(:global.disconnect/0 on it), so only web-5 went away"
    )

    collateral =
      rest
      |> Enum.flat_map(&TestCluster.call(&1, TestCluster.Remote, :nodedowns, []))
      |> Enum.count(&(&1 != gone.node))

    say(
      "nodedowns the 4 healthy nodes saw of each other: #{collateral}; " <>
        "cluster: #{length(rest)} nodes, full mesh: #{TestCluster.full_mesh?(rest)}"
    )

    section("4. API outage: every request fails with 503 for 4 s")
    FakeAPI.inject(api, {:status, 503}, times: :infinity)
    t_outage = now()
    held = hold_check(rest, 4_000)
    FakeAPI.clear_faults(api)

    say(
      "outage over after #{now() - t_outage} ms; the cluster held throughout: #{held} " <>
        "(the strategies backed off and kept their membership)"
    )

    t_back = now()
    wait_until(fn -> successes_since(api, t_back) >= length(rest) end, 10_000)
    say("polls succeed again #{now() - t_back} ms after the API came back")

    send(watcher, :stop)
    Process.sleep(100)

    section("summary")
    requests = FakeAPI.requests(api)

    say(
      "API requests: #{length(requests)} (#{Enum.count(requests, &(&1.status == 200))} answered 200)"
    )

    say("full mesh in #{mesh_ms} ms; total run #{now() - started} ms")
    Enum.each(nodes, &TestCluster.stop/1)
    FakeAPI.stop(api)
    banner("demo finished")
  end

  # The public address of a droplet: another loopback address, unused.
  defp public_of(addr) do
    [a, b, c, d] = String.split(addr, ".")
    Enum.join([a, String.to_integer(b) + 1, c, d], ".")
  end

  defp watch(api, nodes) do
    t0 = Process.get(:t0)

    spawn_link(fn ->
      Process.put(:t0, t0)
      loop(api, nodes, MapSet.new(), 0)
    end)
  end

  defp loop(api, nodes, edges, seen) do
    receive do
      :stop -> :ok
    after
      50 ->
        requests = FakeAPI.requests(api)
        new = Enum.drop(requests, seen)
        Enum.each(new, &print_request/1)

        current =
          for node <- nodes,
              peer <- safe_connected(node),
              node.node < peer,
              into: MapSet.new(),
              do: {node.node, peer}

        for {a, b} <- MapSet.difference(current, edges),
            do: say("  #{short(a)} <-> #{short(b)} connected")

        for {a, b} <- MapSet.difference(edges, current),
            do: say("  #{short(a)} -x- #{short(b)} disconnected")

        loop(api, nodes, current, length(requests))
    end
  end

  defp safe_connected(node) do
    TestCluster.connected(node)
  catch
    _, _ -> []
  end

  defp print_request(%{query: query, status: status}) do
    filter = if query["tag_name"], do: "tag_name=#{query["tag_name"]}", else: "all"
    say("  API  GET /v2/droplets #{filter} page #{query["page"] || "1"} -> #{status}")
  end

  # at_ms is this VM's monotonic clock, as now/0.
  defp successes_since(api, t) do
    api |> FakeAPI.requests() |> Enum.count(&(&1.status == 200 and &1.at_ms >= t))
  end

  defp hold_check(nodes, ms) do
    deadline = now() + ms

    Stream.repeatedly(fn ->
      Process.sleep(100)
      TestCluster.full_mesh?(nodes)
    end)
    |> Enum.reduce_while(true, fn ok, acc ->
      if now() > deadline, do: {:halt, acc and ok}, else: {:cont, acc and ok}
    end)
  end

  defp wait_until(fun, timeout) do
    deadline = now() + timeout

    Stream.repeatedly(fn -> fun.() end)
    |> Enum.find(fn ok ->
      cond do
        ok -> true
        now() > deadline -> raise "demo step did not complete in #{timeout} ms"
        true -> Process.sleep(20) && false
      end
    end)
  end

  defp short(node), do: node |> Atom.to_string() |> String.split("@") |> hd()
  defp now, do: System.monotonic_time(:millisecond)

  defp say(line) do
    t = now() - (Process.get(:t0) || now())
    IO.puts("[#{:io_lib.format(~c"~7.3f", [t / 1000])}s] #{line}")
  end

  defp section(title), do: IO.puts("\n== #{title}")

  defp banner(title),
    do: IO.puts("\n#{String.duplicate("=", 10)} #{title} #{String.duplicate("=", 10)}\n")
end

Demo.run()
