# Convergence with real nodes: time to a full mesh, from a droplet's removal
# to its disconnection everywhere, and from a new droplet's appearance to
# its joining, for 5, 10 and 20 nodes at several polling intervals. Run with
# `make bench` or `MIX_ENV=dev mix run --no-start bench/run.exs convergence`.
Code.require_file("support/bench_helper.exs", __DIR__)

defmodule Bench.Convergence do
  @moduledoc false
  # Each node is its own BEAM VM on its own loopback address (see
  # LibclusterDroplet.TestCluster). For a node count, the nodes boot once;
  # for each interval and run, every node starts the strategy and the times
  # are taken from this VM's clock by polling the nodes' connection lists
  # every 5 ms (so each figure carries up to ~5 ms of observation delay).

  alias Bench.Helper
  alias LibclusterDroplet.{FakeAPI, TestCluster}

  @token "dop_v1_convergence_bench"
  @sizes [5, 10, 20]
  @intervals [250, 1_000, 2_500]
  @runs 3

  def run do
    Helper.header("convergence: real nodes clustering through Cluster.Strategy.Droplet", %{
      "nodes" => Enum.join(@sizes, ", "),
      "polling_interval (ms)" => Enum.join(@intervals, ", "),
      "runs per cell (median shown)" => @runs,
      "coordination" => "on (the default)"
    })

    results = for size <- @sizes, result <- measure_size(size), do: result

    Helper.section("medians, ms (target: removal ≤ 2 × interval; join ≤ interval + 1,000)")

    rows =
      for r <- results do
        [
          Integer.to_string(r.nodes),
          Helper.int(r.interval),
          Helper.int(r.mesh_ms),
          Helper.int(r.removal_ms),
          Helper.verdict(r.removal_ms <= 2 * r.interval),
          Helper.int(r.join_ms),
          Helper.verdict(r.join_ms <= r.interval + 1_000)
        ]
      end

    Helper.table(
      [
        "nodes",
        "interval",
        "start → mesh",
        "removal → gone",
        "≤ 2×int",
        "new → joined",
        "≤ int+1s"
      ],
      rows
    )

    Helper.write_results("convergence", %{results: results})
  end

  defp measure_size(size) do
    {:ok, api} = FakeAPI.start_link(token: @token)
    prefix = "cv#{size}x#{System.unique_integer([:positive])}"
    addresses = TestCluster.allocate_addresses(size)

    droplets =
      for {address, i} <- Enum.with_index(addresses, 1),
          do: FakeAPI.droplet(id: i, name: name(prefix, i), private_ip: address, tags: ["web"])

    nodes =
      droplets
      |> Enum.zip(addresses)
      |> Task.async_stream(fn {d, a} -> TestCluster.start_node(d["name"], a) end,
        timeout: 60_000,
        max_concurrency: 4
      )
      |> Enum.map(fn {:ok, node} -> node end)

    try do
      for interval <- @intervals do
        runs = for _ <- 1..@runs, do: measure_run(api, droplets, nodes, interval)
        IO.puts("  #{size} nodes, interval #{interval} ms: #{inspect(runs)}")

        %{
          nodes: size,
          interval: interval,
          mesh_ms: Helper.median(Enum.map(runs, & &1.mesh_ms)),
          removal_ms: Helper.median(Enum.map(runs, & &1.removal_ms)),
          join_ms: Helper.median(Enum.map(runs, & &1.join_ms))
        }
      end
    after
      Enum.each(nodes, &TestCluster.stop/1)
      FakeAPI.stop(api)
    end
  end

  # Names sort in node order, so the last node is never the poller.
  defp name(prefix, i), do: "#{prefix}-#{String.pad_leading(Integer.to_string(i), 2, "0")}"

  defp measure_run(api, droplets, nodes, interval) do
    FakeAPI.put_droplets(api, droplets)

    config = [
      token: @token,
      api_url: FakeAPI.url(api),
      tag_name: "web",
      polling_interval: interval,
      max_requests_per_minute: 60_000
    ]

    started = now()
    sups = Enum.map(nodes, &TestCluster.start_strategy(&1, :bench, config))
    wait(fn -> TestCluster.full_mesh?(nodes) end)
    mesh_ms = now() - started
    settle(interval)

    # Removal: the last droplet's app stops clustering and the droplet goes.
    {last, last_sup} = {List.last(nodes), List.last(sups)}
    TestCluster.call(last, Supervisor, :stop, [last_sup])
    removed = now()
    FakeAPI.remove_droplet(api, length(droplets))
    wait(fn -> TestCluster.connected(last) == [] end)
    removal_ms = now() - removed
    settle(interval)

    # A new droplet appears and its app starts clustering.
    appeared = now()
    FakeAPI.add_droplet(api, List.last(droplets))
    last_sup = TestCluster.start_strategy(last, :bench, config)
    wait(fn -> TestCluster.full_mesh?(nodes) end)
    join_ms = now() - appeared

    reset(nodes, Enum.drop(sups, -1) ++ [last_sup])
    %{mesh_ms: mesh_ms, removal_ms: removal_ms, join_ms: join_ms}
  end

  # Back to a cold start: no strategy, no connection, nothing remembered (a
  # strategy that shuts down normally erases what it stored).
  defp reset(nodes, sups) do
    for {node, sup} <- Enum.zip(nodes, sups), do: TestCluster.call(node, Supervisor, :stop, [sup])

    for node <- nodes,
        other <- TestCluster.connected(node),
        do: TestCluster.call(node, :erlang, :disconnect_node, [other])

    wait(fn -> Enum.all?(nodes, &(TestCluster.connected(&1) == [])) end)
  end

  # Two intervals for the cluster to settle, then a random phase, so an event
  # lands anywhere in the poller's cycle rather than always just after a poll.
  defp settle(interval), do: Process.sleep(2 * interval + :rand.uniform(interval))

  defp wait(fun), do: TestCluster.await(fun, 60_000, 5)

  defp now, do: System.monotonic_time(:millisecond)
end

Bench.Convergence.run()
