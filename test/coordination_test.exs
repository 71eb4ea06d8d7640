defmodule LibclusterDroplet.CoordinationTest do
  @moduledoc false
  # One poller per cluster, proven with real nodes against the fake API,
  # plus the pure decisions of LibclusterDroplet.Coordination.
  use ExUnit.Case, async: true

  alias LibclusterDroplet.{Coordination, FakeAPI, TestCluster}
  alias LibclusterDroplet.TestCluster.Remote

  @token "dop_v1_coordination_token"
  @interval 300

  describe "decisions" do
    @fp 42
    defp coordination(fields \\ []),
      do: struct(%Coordination{enabled?: true, name: :n, fingerprint: @fp}, fields)

    test "a node follows only lower-named nodes with the same fingerprint" do
      assert {:accept, %Coordination{leader: :a@h, leader_seen_at: 10}, :monitor} =
               Coordination.share(coordination(), :a@h, @fp, 10, :b@h, 100)

      assert :ignore = Coordination.share(coordination(), :c@h, @fp, 10, :b@h, 100)
      assert :ignore = Coordination.share(coordination(), :a@h, @fp + 1, 10, :b@h, 100)
      assert :ignore = Coordination.share(%Coordination{}, :a@h, nil, 10, :b@h, 100)
    end

    test "a lower leader wins; a higher one is ignored while the current one is live" do
      c = coordination(leader: :b@h, leader_seen_at: 0)

      assert {:accept, %{leader: :a@h}, :monitor} =
               Coordination.share(c, :a@h, @fp, 10, :z@h, 100)

      assert :ignore = Coordination.share(c, :c@h, @fp, 10, :z@h, 100)
      # ...unless the current one went silent.
      assert {:accept, %{leader: :c@h}, :monitor} =
               Coordination.share(c, :c@h, @fp, 5_000, :z@h, 100)

      assert {:accept, %{leader_seen_at: 99}, :keep} =
               Coordination.share(c, :b@h, @fp, 99, :z@h, 100)
    end

    test "ticks: alone, poll; following, don't; silent leader or safety interval, poll" do
      assert :poll = Coordination.tick(coordination(), 0, 100, 1)
      following = coordination(leader: :a@h, leader_seen_at: 1_000, last_api_poll_at: 1_000)
      assert :follow = Coordination.tick(following, 1_100, 100, 5)
      # Stale after 2 intervals + 1 s.
      assert :follow = Coordination.tick(following, 2_200, 100, 5)
      assert :poll = Coordination.tick(following, 2_201, 100, 5)
      # Safety: 4 × (5 − 1) × 100 ms after its own last poll.
      fresh = %{following | leader_seen_at: 2_600}
      assert :follow = Coordination.tick(fresh, 2_599, 100, 5)
      assert :poll = Coordination.tick(fresh, 2_600, 100, 5)
    end

    test "safety polls slow down with a leader's paced views, never speed up" do
      paced = coordination(leader: :a@h, last_api_poll_at: 0) |> Coordination.paced(1_000)
      # 4 × (5 − 1) × the leader's 1,000 ms, not our 100 ms.
      assert :follow = Coordination.tick(%{paced | leader_seen_at: 15_999}, 15_999, 100, 5)
      assert :poll = Coordination.tick(%{paced | leader_seen_at: 16_000}, 16_000, 100, 5)
      # A leader faster than us: our own interval still sets the pace.
      brisk = %{Coordination.paced(paced, 10) | leader_seen_at: 1_599}
      assert :follow = Coordination.tick(brisk, 1_599, 100, 5)
      assert :poll = Coordination.tick(%{brisk | leader_seen_at: 1_600}, 1_600, 100, 5)
    end

    test "only a share with a view sets the pace: a failing leader's notices never do" do
      c = coordination(leader: :a@h, leader_seen_at: 0)
      notice = %{from: :a@h, fingerprint: @fp, interval: 60_000, verdicts: nil, droplets: nil}

      assert {:accept, %{leader_pace: nil, leader_interval: 60_000}, :keep} =
               Coordination.share(c, notice, 10, :z@h)

      assert {:accept, %{leader_pace: 60_000}, :keep} =
               Coordination.share(c, %{notice | verdicts: []}, 10, :z@h)
    end

    test "a pace from a peer is capped as a paced wait; a new leader's starts afresh" do
      max = LibclusterDroplet.Schedule.max_paced_wait()
      c = coordination(leader: :b@h, last_api_poll_at: 0) |> Coordination.paced(1_000_000_000_000)
      assert c.leader_pace == max
      due = Coordination.safety_interval(max, 5)
      assert :follow = Coordination.tick(%{c | leader_seen_at: due - 1}, due - 1, 100, 5)
      assert :poll = Coordination.tick(%{c | leader_seen_at: due}, due, 100, 5)

      assert {:accept, %{leader: :a@h, leader_pace: nil}, :monitor} =
               Coordination.share(%{c | leader_seen_at: 0}, :a@h, @fp, 10, :z@h, 100)
    end

    test "followers together add at most a quarter of the leader's polls" do
      for size <- [2, 5, 10, 30, 100] do
        followers_rate = (size - 1) / Coordination.safety_interval(1_000, size)
        assert followers_rate <= 0.25 / 1_000 + 1.0e-12
      end
    end

    test "when the leader goes, the lowest remaining node takes over at once" do
      c = coordination(leader: :a@h, leader_seen_at: 0)
      assert {:poll_now, %{leader: nil}} = Coordination.leader_down(c, [:a@h, :c@h], 10, :b@h)

      assert {:await, :b@h, %{leader: :b@h, leader_seen_at: 10}} =
               Coordination.leader_down(c, [:b@h], 10, :c@h)
    end

    test "successors that do not run the strategy are passed over, never awaited in turn" do
      # b polled and died; a and c are connected but run no strategy, so
      # monitoring either gives an immediate DOWN.
      c = coordination(leader: :b@h, leader_seen_at: 0)
      connected = [:a@h, :b@h, :c@h]
      assert {:await, :a@h, c} = Coordination.leader_down(c, connected, 10, :z@h)
      assert {:await, :c@h, c} = Coordination.leader_down(c, connected, 20, :z@h)

      assert {:poll_now, %{passed_over: passed}} =
               Coordination.leader_down(c, connected, 30, :z@h)

      assert MapSet.size(passed) == 0

      # A real share from a live leader forgets who was passed over.
      c = coordination(leader: :b@h, leader_seen_at: 0)
      {:await, :a@h, c} = Coordination.leader_down(c, connected, 10, :z@h)

      assert {:accept, %{passed_over: passed}, :keep} =
               Coordination.share(c, :a@h, @fp, 15, :z@h, 100)

      assert MapSet.size(passed) == 0
    end
  end

  describe "with real nodes" do
    setup do
      {:ok, api} = FakeAPI.start_link(token: @token)
      {:ok, api: api, prefix: "k#{System.unique_integer([:positive])}"}
    end

    defp start_nodes(api, prefix, range) do
      for i <- range do
        [address] = TestCluster.allocate_addresses(1)
        name = "#{prefix}-#{String.pad_leading(Integer.to_string(i), 2, "0")}"

        FakeAPI.add_droplet(
          api,
          FakeAPI.droplet(id: i, name: name, private_ip: address, tags: ["web"])
        )

        node = TestCluster.start_node(name, address)
        on_exit(fn -> TestCluster.stop(node) end)
        node
      end
    end

    defp config(api) do
      [
        token: @token,
        api_url: FakeAPI.url(api),
        polling_interval: @interval,
        max_requests_per_minute: 60_000
      ]
    end

    defp start(nodes, api, extra \\ []),
      do: for(n <- nodes, do: {n, TestCluster.start_strategy(n, :droplets, config(api) ++ extra)})

    defp listen_on(node, port) do
      {:ok, ip} = :inet.parse_address(String.to_charlist(node.address))
      {:ok, l} = :gen_tcp.listen(port, ip: ip, reuseaddr: true, backlog: 128)
      on_exit(fn -> :gen_tcp.close(l) end)
    end

    defp coordination(node, sup) do
      pid = TestCluster.call(node, Remote, :strategy_pid, [sup])
      TestCluster.call(node, :sys, :get_state, [pid]).coordination
    end

    defp mesh(nodes), do: TestCluster.await(fn -> TestCluster.full_mesh?(nodes) end, 15_000)

    # Nodes for `range`, each running the strategy, meshed, and given a few
    # polls for the shares to settle who polls. Returns [{node, sup}].
    defp formed_cluster(api, prefix, range, health_port \\ nil) do
      nodes = start_nodes(api, prefix, range)
      if health_port, do: Enum.each(nodes, &listen_on(&1, health_port))

      extra =
        if health_port, do: [health_check: {:tcp, port: health_port, timeout: 500}], else: []

      started = start(nodes, api, extra)
      mesh(nodes)
      # Settled on who polls: every other node follows the lowest-named one.
      [{leader, _} | followers] = started

      for {node, sup} <- followers,
          do: TestCluster.await(fn -> coordination(node, sup).leader == leader.node end, 30_000)

      started
    end

    test "once connected, only the lowest-named node polls at full rate", %{
      api: api,
      prefix: prefix
    } do
      started = formed_cluster(api, prefix, 1..5)

      [{leader, leader_sup} | followers] = started
      assert %Coordination{enabled?: true, leader: nil} = coordination(leader, leader_sup)

      for {node, sup} <- followers do
        assert coordination(node, sup).leader == leader.node
      end

      # While the poller polls 16 more times, each follower polls at most
      # twice (its safety interval is 4 × 4 poller intervals, and both run
      # on the same clock, however slow the machine): counts, not a clock.
      before = for {n, sup} <- started, do: strategy_state(n, sup).schedule.polls
      [leader_before | _] = before

      TestCluster.await(
        fn -> strategy_state(leader, leader_sup).schedule.polls >= leader_before + 16 end,
        60_000
      )

      after_ = for {n, sup} <- started, do: strategy_state(n, sup).schedule.polls

      for {{b, a}, {n, _}} <- Enum.zip(Enum.zip(tl(before), tl(after_)), followers) do
        assert a - b <= 2, "#{n.node} polled #{a - b} times while the poller polled 16"
      end
    end

    test "a node connected to no one polls at its own full rate", %{api: api, prefix: prefix} do
      [alone] = start_nodes(api, prefix, 1..1)
      [{_, sup}] = start([alone], api)
      # It follows no one, so every tick polls (Coordination.tick/4, unit
      # tested above): its polls keep coming.
      TestCluster.await(fn -> strategy_state(alone, sup).schedule.polls >= 10 end, 30_000)
      assert %Coordination{leader: nil} = strategy_state(alone, sup).coordination
    end

    test "when the poller goes away, the next one takes over", %{
      api: api,
      prefix: prefix
    } do
      [{leader, _}, {second, second_sup} | _] = started = formed_cluster(api, prefix, 1..4)
      nodes = Enum.map(started, &elem(&1, 0))

      polls = strategy_state(second, second_sup).schedule.polls
      TestCluster.stop(leader)
      rest = nodes -- [leader]

      TestCluster.await(fn -> coordination(second, second_sup).leader == nil end)
      TestCluster.await(fn -> strategy_state(second, second_sup).schedule.polls > polls end)
      TestCluster.await(fn -> TestCluster.full_mesh?(rest) end)
    end

    test "a follower takes over even when the lower-named nodes left run no strategy",
         %{api: api, prefix: prefix} do
      # 01 and 03 are droplets whose app does not run the strategy; 02 polls, 04 follows.
      [n1, n2, n3, n4] = nodes = start_nodes(api, prefix, 1..4)
      [{_, _}, {^n4, sup4}] = start([n2, n4], api)
      # n1 and n3 never connect to each other: only 02 and 04 cluster.
      TestCluster.await(fn -> TestCluster.connected(n4) == Enum.map(nodes -- [n4], & &1.node) end)
      TestCluster.await(fn -> coordination(n4, sup4).leader == n2.node end)

      FakeAPI.reset_requests(api)
      TestCluster.stop(n2)
      TestCluster.await(fn -> FakeAPI.request_count(api) > 0 end, 5_000)
      TestCluster.await(fn -> coordination(n4, sup4).leader == nil end)
      assert TestCluster.connected(n4) == Enum.sort([n1.node, n3.node])
    end

    # Latencies are the convergence benchmark's; these prove the events.
    test "a new droplet joins and, sorting first, becomes the poller", %{
      api: api,
      prefix: prefix
    } do
      nodes = api |> formed_cluster(prefix, 2..5) |> Enum.map(&elem(&1, 0))

      # The newcomer sorts first, so it also becomes the poller.
      [newcomer] = start_nodes(api, prefix, 1..1)
      [{_, sup}] = start([newcomer], api)
      mesh([newcomer | nodes])
      assert %Coordination{leader: nil, enabled?: true} = coordination(newcomer, sup)
    end

    test "a removed droplet is disconnected everywhere", %{api: api, prefix: prefix} do
      started = formed_cluster(api, prefix, 1..5)

      # Remove a follower: its app stops clustering, its droplet goes away.
      {gone, gone_sup} = List.last(started)
      TestCluster.call(gone, Supervisor, :stop, [gone_sup])
      FakeAPI.remove_droplet(api, 5)
      TestCluster.await(fn -> TestCluster.connected(gone) == [] end, 15_000)
      assert TestCluster.full_mesh?(Enum.map(Enum.drop(started, -1), &elem(&1, 0)))
    end

    defp strategy_state(node, sup) do
      pid = TestCluster.call(node, Remote, :strategy_pid, [sup])
      TestCluster.call(node, :sys, :get_state, [pid])
    end

    # What a node's clock says, and when its next safety poll is due by it.
    defp safety_due(node, sup, size) do
      state = strategy_state(node, sup)
      now = TestCluster.call(node, System, :monotonic_time, [:millisecond])
      due = state.coordination.last_api_poll_at + Coordination.safety_interval(@interval, size)
      %{polls: state.schedule.polls, now: now, due: due}
    end

    test "when the poller goes away, exactly one node takes over", %{api: api, prefix: prefix} do
      [{leader, _}, {successor, successor_sup} | others] = formed_cluster(api, prefix, 1..5)
      before = for {n, sup} <- others, into: %{}, do: {n.node, safety_due(n, sup, 5)}
      successor_polls = strategy_state(successor, successor_sup).schedule.polls

      TestCluster.stop(leader)

      TestCluster.await(fn ->
        strategy_state(successor, successor_sup).schedule.polls > successor_polls
      end)

      TestCluster.await(fn ->
        Enum.all?(others, fn {n, sup} ->
          strategy_state(n, sup).coordination.leader == successor.node
        end)
      end)

      for {n, sup} <- others do
        now = safety_due(n, sup, 5)
        %{polls: polls, due: due} = before[n.node]
        # Any poll of theirs before their safety poll was due would be a second takeover.
        assert now.polls == polls or now.now >= due,
               "#{n.node} polled #{now.polls - polls} times though its safety poll was not due"
      end
    end

    # A cluster whose share checks are always in flight: every node probes a
    # health port where one listed droplet drops SYNs, for 1 s per check.
    defp probing_cluster(api, prefix, range) do
      port = 20_000 + rem(System.unique_integer([:positive]), 20_000)
      nodes = start_nodes(api, prefix, range)

      for n <- nodes do
        {:ok, ip} = :inet.parse_address(String.to_charlist(n.address))
        {:ok, l} = :gen_tcp.listen(port, ip: ip, reuseaddr: true, backlog: 128)
        on_exit(fn -> :gen_tcp.close(l) end)
      end

      [hole] = TestCluster.allocate_addresses(1)
      sockets = TestCluster.black_hole(hole, port)
      on_exit(fn -> Enum.each(sockets, &:gen_tcp.close/1) end)

      FakeAPI.add_droplet(
        api,
        FakeAPI.droplet(id: 99, name: "#{prefix}-99", private_ip: hole, tags: ["web"])
      )

      config = config(api) ++ [health_check: {:tcp, port: port, timeout: 1_000}]
      started = for n <- nodes, do: {n, TestCluster.start_strategy(n, :droplets, config)}
      mesh(nodes)
      [_ | followers] = started

      TestCluster.await(fn ->
        Enum.all?(followers, fn {n, sup} ->
          match?(%Cluster.Strategy.Droplet.ShareCheck{}, strategy_state(n, sup).phase)
        end)
      end)

      started
    end

    test "a poller that goes away while followers check a share is taken over", %{
      api: api,
      prefix: prefix
    } do
      [{leader, _}, {successor, successor_sup} | _] = probing_cluster(api, prefix, 1..3)

      assert %Cluster.Strategy.Droplet.ShareCheck{} =
               strategy_state(successor, successor_sup).phase

      TestCluster.stop(leader)

      TestCluster.await(fn ->
        strategy_state(successor, successor_sup).coordination.leader == nil
      end)

      polls = strategy_state(successor, successor_sup).schedule.polls
      TestCluster.await(fn -> strategy_state(successor, successor_sup).schedule.polls > polls end)
    end

    test "followers busy checking shares still poll once the poller's polls fail", %{
      api: api,
      prefix: prefix
    } do
      [_ | followers] = probing_cluster(api, prefix, 1..3)
      FakeAPI.inject(api, {:status, 503}, times: :infinity)

      # The poller is alive but shares nothing: after 2 × interval + 1 s each
      # follower polls itself (and fails too), its tick never lost.
      for {n, sup} <- followers do
        TestCluster.await(fn -> strategy_state(n, sup).schedule.failures >= 1 end, 20_000)
        assert Map.has_key?(strategy_state(n, sup).timers, :tick)
      end
    end

    test "the poller shares a listing before it probes and connects", %{api: api, prefix: prefix} do
      port = 20_000 + rem(System.unique_integer([:positive]), 20_000)
      [{leader, leader_sup} | _] = started = formed_cluster(api, prefix, 1..3, port)
      pid = TestCluster.call(leader, Remote, :strategy_pid, [leader_sup])
      TestCluster.call(leader, Remote, :trace_strategy, [pid])

      # A new droplet: the next listing is shared, probed, then connected.
      [newcomer] = start_nodes(api, prefix, 4..4)
      listen_on(newcomer, port)
      mesh([newcomer | Enum.map(started, &elem(&1, 0))])

      # The poller's listing that found the newcomer: shared first, then
      # probed, and connected (unless a follower, acting on the share, got
      # there first: connect_all then meshes the poller too).
      about = ~r/[^0-9.]#{Regex.escape(newcomer.address)}[^0-9.]/

      events =
        TestCluster.await(fn ->
          events = TestCluster.call(leader, Remote, :traced, [about])
          {:probe, true} in events && events
        end)

      shared = Enum.find_index(events, &(&1 == {:share, true}))
      probed = Enum.find_index(events, &(&1 == {:probe, true}))
      assert shared != nil and shared < probed, inspect(events)

      for {{:connect, true}, at} <- Enum.with_index(events),
          do: assert(at > probed, inspect(events))
    end

    test "followers judge the poller's silence by the wait it announces, stretched when the budget is low",
         %{prefix: prefix} do
      # A budget that runs low fast: the poller stretches and spreads its polls.
      {:ok, api} = FakeAPI.start_link(token: @token, rate_limit: [per_hour: 20, hour_ms: 20_000])

      [_, {follower, follower_sup}] = formed_cluster(api, prefix, 1..2)

      TestCluster.await(
        fn ->
          c = strategy_state(follower, follower_sup).coordination
          c.leader_interval != nil and c.leader_interval >= 2 * @interval
        end,
        30_000
      )
    end

    test "a partition heals", %{api: api, prefix: prefix} do
      nodes = start_nodes(api, prefix, 1..4)
      start(nodes, api)
      mesh(nodes)
      [a, b | _] = nodes

      # Cut the poller off from everyone, then one follower from the rest.
      for other <- nodes -- [a], do: TestCluster.call(a, :erlang, :disconnect_node, [other.node])
      TestCluster.call(b, :erlang, :disconnect_node, [Enum.at(nodes, 2).node])
      refute TestCluster.full_mesh?(nodes)
      mesh(nodes)
    end
  end
end
