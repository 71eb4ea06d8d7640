# The API budget, the headline: 1, 10 and 30 real nodes poll one fake API
# whose rate limits are scaled so that an hour passes in a minute, for
# several scaled hours. Requests per scaled hour, 429s drawn, join latency;
# plus the uncoordinated behaviour of the original strategy and a token
# shared with another, greedy client. Run with `make bench` or
# `MIX_ENV=dev mix run --no-start bench/run.exs budget`.
Code.require_file("support/bench_helper.exs", __DIR__)

defmodule Bench.Budget do
  @moduledoc false
  # Time is scaled by 60: DigitalOcean's 5,000 requests per sliding hour
  # become 5,000 per sliding minute, its 250 per minute become 250 per
  # second, and the strategy's default 5 s polling interval becomes 83 ms
  # (its per-minute request budget is scaled the same way). A scaled hour is
  # one real minute. Join latency is real time: a droplet appears and its
  # node starts the strategy, until it is connected to every node.

  alias Bench.Helper
  alias LibclusterDroplet.{FakeAPI, TestCluster}

  @token "dop_v1_budget_bench"
  @scale 60
  @hour_ms div(3_600_000, @scale)
  @interval div(5_000, @scale)
  @max_per_minute 125 * @scale
  @joins_per_hour 4
  @poll_mfa {LibclusterDroplet, :list_request, 2}

  @scenarios [
    %{name: "1 node", nodes: 1, hours: 2},
    %{name: "10 nodes", nodes: 10, hours: 2},
    %{name: "30 nodes", nodes: 30, hours: 2},
    %{name: "10 nodes, coordination off (pacing alone)", nodes: 10, hours: 1, coordinate: false},
    # Not the strategy: what the original does, 10 plain pollers every 5 s
    # (scaled) with per_page=20, no coordination and no pacing.
    %{name: "10 pollers as the original", nodes: 10, hours: 1, plain: true},
    %{
      name: "10 nodes + another client at 90% of the budget",
      nodes: 10,
      hours: 2,
      other_per_hour: 4_500
    }
  ]

  def run do
    Helper.header("API budget: requests per scaled hour as the cluster grows", %{
      "time scale" =>
        "1 scaled hour = #{div(@hour_ms, 1000)} s (limits: 5,000/scaled hour, 250/scaled minute)",
      "polling_interval" => "#{@interval} ms (5 s scaled)",
      "joins measured" => "#{@joins_per_hour} per scaled hour",
      "scenarios" => Enum.map_join(scenarios(), "; ", & &1.name)
    })

    results = Enum.map(scenarios(), &run_scenario/1)
    Helper.write_results("budget", %{scale: @scale, interval_ms: @interval, results: results})
    single = Enum.find(results, &(&1.name == "1 node"))

    Helper.section(
      "per scaled hour (target: 30 nodes ≤ 1.5 × 1 node, zero 429s, join ≤ interval + 1 s = #{@interval + 1_000} ms)"
    )

    rows =
      for r <- results do
        [
          r.name,
          Helper.int(round(r.requests_per_hour)),
          Helper.num(r.requests_per_hour / single.requests_per_hour, 2) <> "×",
          Helper.int(r.throttled),
          r.join_median_ms && Helper.int(round(r.join_median_ms)),
          r.join_max_ms && Helper.int(r.join_max_ms),
          "#{r.coordinating} of #{r.nodes}",
          # Without coordination no node is the poller: no split to show.
          if(r.coordinating > 0,
            do: "#{round(r.poller_polls_per_hour)} + #{round(r.follower_polls_per_hour)}"
          )
        ]
      end

    Helper.table(
      [
        "scenario",
        "requests/h",
        "vs 1 node",
        "429s",
        "join p50 ms",
        "join max ms",
        "coordinating",
        "polls/h: poller + followers"
      ],
      rows
    )

    with %{} = thirty <- Enum.find(results, &(&1.name == "30 nodes")) do
      ratio = thirty.requests_per_hour / single.requests_per_hour

      IO.puts("""

      30 nodes vs 1: #{Helper.num(ratio, 2)}× (#{Helper.verdict(ratio <= 1.5)}), \
      429s: #{thirty.throttled} (#{Helper.verdict(thirty.throttled == 0)}), \
      join max #{thirty.join_max_ms} ms (#{Helper.verdict(thirty.join_max_ms <= @interval + 1_000)})
      """)
    end
  end

  # BUDGET_ONLY="1,5" runs some scenarios (1-based; 1 is always included,
  # as the reference).
  defp scenarios do
    case System.get_env("BUDGET_ONLY") do
      nil ->
        @scenarios

      only ->
        picked = only |> String.split(",") |> Enum.map(&String.to_integer(String.trim(&1)))
        for {s, i} <- Enum.with_index(@scenarios, 1), i == 1 or i in picked, do: s
    end
  end

  defp run_scenario(%{plain: true} = scenario) do
    IO.puts("  running #{scenario.name} for #{scenario.hours} scaled hours...")
    {:ok, api} = FakeAPI.start_link(token: @token, rate_limit: scaled_limits())
    FakeAPI.put_droplets(api, [FakeAPI.droplet(id: 1, name: "plain-1")])
    url = FakeAPI.url(api)
    started = now()

    # Plain :httpc GETs, as the original's client: LibclusterDroplet's own
    # client honours the rate-limit floor, which the original never had.
    {:ok, _} = Application.ensure_all_started(:inets)

    request =
      {~c"#{url}/v2/droplets?page=1&per_page=20", [{~c"authorization", ~c"Bearer #{@token}"}]}

    pollers =
      for _ <- 1..scenario.nodes do
        spawn(fn ->
          Stream.repeatedly(fn ->
            :httpc.request(:get, request, [timeout: 5_000], [])
            Process.sleep(@interval)
          end)
          |> Stream.run()
        end)
      end

    Process.sleep(scenario.hours * @hour_ms)
    Enum.each(pollers, &Process.exit(&1, :kill))
    requests = FakeAPI.requests(api)
    FakeAPI.stop(api)

    result = %{
      name: scenario.name,
      nodes: scenario.nodes,
      requests_per_hour: length(requests) / ((now() - started) / @hour_ms),
      throttled: Enum.count(requests, &(&1.status == 429)),
      other_throttled: 0,
      join_median_ms: nil,
      join_max_ms: nil,
      joins: [],
      coordinating: 0,
      poller_polls_per_hour: nil,
      follower_polls_per_hour: nil
    }

    IO.puts("    #{inspect(Map.drop(result, [:name]))}")
    result
  end

  defp run_scenario(scenario) do
    IO.puts("  running #{scenario.name} for #{scenario.hours} scaled hours...")

    {:ok, api} =
      FakeAPI.start_link(
        token: @token,
        rate_limit: [
          per_hour: 5_000,
          hour_ms: @hour_ms,
          per_minute: 250,
          minute_ms: div(60_000, @scale)
        ]
      )

    prefix = "bg#{scenario.nodes}x#{System.unique_integer([:positive])}"
    addresses = TestCluster.allocate_addresses(scenario.nodes + 1)

    droplets =
      for {address, i} <- Enum.with_index(addresses, 1),
          do:
            FakeAPI.droplet(
              id: i,
              name: "#{prefix}-#{String.pad_leading("#{i}", 2, "0")}",
              private_ip: address
            )

    {members, [joiner]} = Enum.split(droplets, scenario.nodes)
    FakeAPI.put_droplets(api, members)
    nodes = start_nodes(droplets)
    {member_nodes, [joiner_node]} = Enum.split(nodes, scenario.nodes)

    config = [
      token: @token,
      api_url: FakeAPI.url(api),
      polling_interval: @interval,
      max_requests_per_minute: @max_per_minute,
      max_backoff: 8 * @interval,
      coordinate: Map.get(scenario, :coordinate, true)
    ]

    try do
      other = start_other_client(api, Map.get(scenario, :other_per_hour))
      started = now()
      sups = Enum.map(member_nodes, &TestCluster.start_strategy(&1, :budget, config))
      count_polls(member_nodes)
      duration = scenario.hours * @hour_ms
      strategies = Enum.zip(member_nodes, sups)
      joins = measure_joins(api, joiner, joiner_node, strategies, config, started + duration)
      Process.sleep(max(started + duration - now(), 0))

      # The setting took effect: how many strategies coordinate, read from
      # their state at the end of the run.
      coordinating =
        member_nodes
        |> Enum.zip(sups)
        |> Enum.count(fn {node, sup} ->
          pid = TestCluster.call(node, TestCluster.Remote, :strategy_pid, [sup])
          TestCluster.call(node, :sys, :get_state, [pid]).coordination.enabled?
        end)

      if other, do: Process.exit(other, :kill)
      [poller_polls | follower_polls] = poll_counts(member_nodes)

      ours = Enum.reject(FakeAPI.requests(api), &(&1.query["name"] == "other-client"))
      hours = (now() - started) / @hour_ms

      result = %{
        name: scenario.name,
        nodes: scenario.nodes,
        requests_per_hour: length(ours) / hours,
        throttled: Enum.count(ours, &(&1.status == 429)),
        other_throttled:
          FakeAPI.requests(api)
          |> Enum.count(&(&1.query["name"] == "other-client" and &1.status == 429)),
        join_median_ms: Helper.median(joins),
        join_max_ms: Enum.max(joins),
        joins: joins,
        coordinating: coordinating,
        poller_polls_per_hour: poller_polls / hours,
        follower_polls_per_hour: Enum.sum(follower_polls) / hours
      }

      IO.puts("    #{inspect(Map.drop(result, [:name]))}")
      result
    after
      Enum.each(nodes, &TestCluster.stop/1)
      FakeAPI.stop(api)
    end
  end

  # Who polls: each member's calls to LibclusterDroplet.list_request/2 (the
  # start of every poll, its own or paced), counted by the VM's call-count
  # tracing from here on. The lowest-named member is the poller (it leads).
  defp count_polls(nodes) do
    for node <- nodes do
      TestCluster.call(node, :code, :ensure_loaded, [LibclusterDroplet])
      TestCluster.call(node, :erlang, :trace_pattern, [@poll_mfa, true, [:call_count]])
      TestCluster.call(node, :erlang, :trace, [:all, true, [:call]])
    end
  end

  defp poll_counts(nodes) do
    for node <- Enum.sort_by(nodes, & &1.node) do
      {:call_count, count} =
        TestCluster.call(node, :erlang, :trace_info, [@poll_mfa, :call_count])

      count
    end
  end

  defp scaled_limits,
    do: [per_hour: 5_000, hour_ms: @hour_ms, per_minute: 250, minute_ms: div(60_000, @scale)]

  defp start_nodes(droplets) do
    droplets
    |> Task.async_stream(
      fn d -> TestCluster.start_node(d["name"], hd(d["networks"]["v4"])["ip_address"]) end,
      timeout: 60_000,
      max_concurrency: 4
    )
    |> Enum.map(fn {:ok, node} -> node end)
  end

  # Whether the strategy `member` runs under `sup` manages `node`.
  defp manages?({member, sup}, node) do
    pid = TestCluster.call(member, TestCluster.Remote, :strategy_pid, [sup])
    node in TestCluster.call(member, :sys, :get_state, [pid]).members.managed
  end

  # Spread over the run: a droplet appears with its node starting the
  # strategy; latency until it is connected to every member. Then it goes
  # away again (strategy stopped, droplet removed, disconnected everywhere).
  defp measure_joins(api, joiner, joiner_node, strategies, config, deadline) do
    members = Enum.map(strategies, &elem(&1, 0))
    gap = div(@hour_ms, @joins_per_hour)
    Process.sleep(gap)

    Stream.repeatedly(fn ->
      appeared = now()
      FakeAPI.add_droplet(api, joiner)
      sup = TestCluster.start_strategy(joiner_node, :budget, config)
      TestCluster.await(fn -> TestCluster.full_mesh?([joiner_node | members]) end, 30_000, 5)
      latency = now() - appeared
      # Let the members see the droplet in a listing: a node they never saw
      # in the API is not theirs to remove when it goes. With the token
      # starved by another client, that poll may be paced far away.
      TestCluster.await(
        fn -> Enum.all?(strategies, &manages?(&1, joiner_node.node)) end,
        2 * @hour_ms,
        20
      )

      TestCluster.call(joiner_node, Supervisor, :stop, [sup])
      FakeAPI.remove_droplet(api, joiner["id"])
      # With the token starved by another client, the poller's next poll
      # may be paced a scaled hour away: wait for it.
      TestCluster.await(fn -> TestCluster.connected(joiner_node) == [] end, 2 * @hour_ms, 20)
      Process.sleep(gap)
      latency
    end)
    |> Enum.reduce_while([], fn latency, acc ->
      if now() + gap > deadline, do: {:halt, [latency | acc]}, else: {:cont, [latency | acc]}
    end)
    |> Enum.reverse()
  end

  # Another user of the same token, at a steady rate of its own.
  defp start_other_client(_api, nil), do: nil

  defp start_other_client(api, per_hour) do
    every = max(div(@hour_ms, per_hour), 1)
    url = FakeAPI.url(api)

    spawn(fn ->
      Stream.repeatedly(fn ->
        LibclusterDroplet.list_droplets(token: @token, api_url: url, name: "other-client")
        Process.sleep(every)
      end)
      |> Stream.run()
    end)
  end

  defp now, do: System.monotonic_time(:millisecond)
end

Bench.Budget.run()
