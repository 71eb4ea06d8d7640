defmodule LibclusterDroplet.CoordinationTest do
  @moduledoc false
  # One poller per cluster, proven with real nodes against the fake API,
  # plus the pure decisions of LibclusterDroplet.Coordination.
  use ExUnit.Case, async: true

  alias LibclusterDroplet.{Coordination, FakeAPI, TestCluster}
  alias LibclusterDroplet.TestCluster.Remote

  @token "dop_v1_coordination_token"
  @interval 300
  # A polling interval no test outlives: a strategy configured with it polls
  # when it starts and when the test (or coordination) makes it, never on
  # its timer, so every poll the test sees has a known cause.
  @idle 600_000

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

    defp config(api, interval) do
      [
        token: @token,
        api_url: FakeAPI.url(api),
        polling_interval: interval,
        max_requests_per_minute: 60_000
      ]
    end

    defp start(nodes, api, interval \\ @interval),
      do:
        for(n <- nodes, do: {n, TestCluster.start_strategy(n, :droplets, config(api, interval))})

    defp strategy_state(node, sup) do
      pid = TestCluster.call(node, Remote, :strategy_pid, [sup])
      TestCluster.call(node, :sys, :get_state, [pid])
    end

    defp coordination(node, sup), do: strategy_state(node, sup).coordination

    # Successful API polls of the strategy on `node`.
    defp polls(node, sup), do: strategy_state(node, sup).polls

    # Makes the strategy on `node` poll now, as its timer would.
    defp poll_now(node, sup) do
      pid = TestCluster.call(node, Remote, :strategy_pid, [sup])
      TestCluster.call(node, :erlang, :send, [pid, :poll])
    end

    defp mesh(nodes), do: TestCluster.await(fn -> TestCluster.full_mesh?(nodes) end, 30_000)

    # Nodes for `range`, each running the strategy, meshed, and settled on
    # who polls: the lowest-named node, made to poll once more so that its
    # share reaches every strategy (with @idle, nothing else would send one),
    # and followed by every other. Returns [{node, sup}].
    defp formed_cluster(api, prefix, range, interval \\ @interval) do
      nodes = start_nodes(api, prefix, range)
      [{leader, leader_sup} | followers] = started = start(nodes, api, interval)
      mesh(nodes)
      poll_now(leader, leader_sup)

      for {node, sup} <- followers,
          do: TestCluster.await(fn -> coordination(node, sup).leader == leader.node end)

      started
    end

    # The strategy's own record of its last events (`:sys.log/2`): what it
    # received and the state each callback returned.
    defp log_events(node, sup, on?) do
      pid = TestCluster.call(node, Remote, :strategy_pid, [sup])
      TestCluster.call(node, :sys, :log, [pid, if(on?, do: {true, 500}, else: :get)])
    end

    # The outcome of every poll tick in a `:sys` log that came with no poll
    # in flight: `:polled` when it started an API poll, `:waited` when not.
    defp ticks(events) do
      events
      |> Enum.chunk_every(3, 1, :discard)
      |> Enum.flat_map(fn
        [{:noreply, %{poll: nil}}, {:in, :poll}, {:noreply, %{poll: %{source: :api}}}] ->
          [:polled]

        [{:noreply, %{poll: nil}}, {:in, :poll}, {:noreply, _}] ->
          [:waited]

        _ ->
          []
      end)
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

      # Counted in the poller's own polls, not in time: 20 of them.
      :ok = log_events(leader, leader_sup, true)
      FakeAPI.reset_requests(api)
      before = for {node, sup} <- started, do: polls(node, sup)
      TestCluster.await(fn -> polls(leader, leader_sup) >= hd(before) + 20 end, 60_000)
      [leader_polls | follower_polls] = for {node, sup} <- started, do: polls(node, sup)
      {:ok, events} = log_events(leader, leader_sup, false)
      requests = FakeAPI.requests(api)

      # Full rate: every tick of the poller's timer polled the API.
      ticks = ticks(events)
      assert length(ticks) >= 19 and Enum.all?(ticks, &(&1 == :polled)), inspect(ticks)

      # A follower polls at most once per safety interval, 4 × (5 − 1)
      # intervals of its own clock: over the span of those requests on the
      # API's clock (less an interval for the requests' own latency) at most
      # span / safety + 1 times, plus one whose request preceded the count.
      # Five nodes polling on their own would each poll about 20 times.
      span = List.last(requests).at_ms - hd(requests).at_ms
      per_follower = div(span, Coordination.safety_interval(@interval, 5) - @interval) + 1

      for {polls_before, polls_after} <- Enum.zip(tl(before), follower_polls) do
        assert polls_after - polls_before <= per_follower + 1,
               "a follower polled #{polls_after - polls_before} times in #{span} ms"
      end

      assert length(requests) <= leader_polls - hd(before) + 1 + 4 * per_follower,
             "#{length(requests)} requests in #{span} ms"
    end

    test "a node connected to no one polls at its own full rate", %{api: api, prefix: prefix} do
      [alone] = start_nodes(api, prefix, 1..1)
      [{^alone, sup}] = start([alone], api)
      :ok = log_events(alone, sup, true)
      FakeAPI.reset_requests(api)
      TestCluster.await(fn -> FakeAPI.request_count(api) >= 10 end, 30_000)
      {:ok, events} = log_events(alone, sup, false)

      # Every tick of its timer polled: it follows no one.
      ticks = ticks(events)
      assert length(ticks) >= 9 and Enum.all?(ticks, &(&1 == :polled)), inspect(ticks)
      assert coordination(alone, sup).leader == nil

      # And no faster than its interval.
      gaps = FakeAPI.requests(api) |> Enum.map(& &1.at_ms) |> Enum.chunk_every(2, 1, :discard)
      assert Enum.all?(gaps, fn [a, b] -> b - a >= @interval end), inspect(gaps)
    end

    test "when the poller goes away, the next one takes over at once", %{
      api: api,
      prefix: prefix
    } do
      # With @idle no timer fires during the test: any poll is a reaction.
      [{leader, _}, {second, second_sup} | others] =
        started = formed_cluster(api, prefix, 1..4, @idle)

      nodes = Enum.map(started, &elem(&1, 0))
      polls_before = polls(second, second_sup)
      FakeAPI.reset_requests(api)
      TestCluster.stop(leader)

      # Only the poller's DOWN can make the second node poll: it does, alone,
      # and the others follow it.
      TestCluster.await(fn -> polls(second, second_sup) > polls_before end, 15_000)
      assert coordination(second, second_sup).leader == nil

      for {node, sup} <- others,
          do: TestCluster.await(fn -> coordination(node, sup).leader == second.node end)

      assert FakeAPI.request_count(api) == 1
      TestCluster.await(fn -> TestCluster.full_mesh?(nodes -- [leader]) end)
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
      TestCluster.await(fn -> FakeAPI.request_count(api) > 0 end, 15_000)
      TestCluster.await(fn -> coordination(n4, sup4).leader == nil end)
      assert TestCluster.connected(n4) == Enum.sort([n1.node, n3.node])
    end

    test "a new droplet joins on the poll it makes when it starts", %{api: api, prefix: prefix} do
      # With @idle no timer fires during the test: the only poll is the
      # newcomer's first, as it starts.
      nodes = api |> formed_cluster(prefix, 2..5, @idle) |> Enum.map(&elem(&1, 0))

      # The newcomer sorts first, so it also becomes the poller.
      [newcomer] = start_nodes(api, prefix, 1..1)
      count = FakeAPI.request_count(api)
      start([newcomer], api, @idle)
      mesh([newcomer | nodes])
      assert FakeAPI.request_count(api) == count + 1
    end

    test "a removed droplet is disconnected everywhere by one poll of the poller", %{
      api: api,
      prefix: prefix
    } do
      # With @idle no timer fires during the test: the poller polls once,
      # when told, and the followers act on what it shares.
      [{leader, leader_sup} | _] = started = formed_cluster(api, prefix, 1..5, @idle)

      # Remove a follower: its app stops clustering, its droplet goes away.
      {gone, gone_sup} = List.last(started)
      TestCluster.call(gone, Supervisor, :stop, [gone_sup])
      FakeAPI.remove_droplet(api, 5)
      count = FakeAPI.request_count(api)
      poll_now(leader, leader_sup)
      TestCluster.await(fn -> TestCluster.connected(gone) == [] end, 30_000)
      assert FakeAPI.request_count(api) == count + 1
    end

    test "a partition heals", %{api: api, prefix: prefix} do
      nodes = start_nodes(api, prefix, 1..4)
      start(nodes, api)
      mesh(nodes)
      [a, b, c, d] = nodes
      Enum.each([a, b], &TestCluster.call(&1, Remote, :start_nodedown_recorder, []))

      # Cut the poller off from everyone, then one follower from the rest.
      for other <- [b, c, d], do: TestCluster.call(a, :erlang, :disconnect_node, [other.node])
      TestCluster.call(b, :erlang, :disconnect_node, [c.node])
      mesh(nodes)

      # The partition happened (the strategies may heal it before any look
      # at the mesh, so it is read from the nodedowns the nodes saw), and
      # the mesh healed after it.
      assert Enum.sort(TestCluster.call(a, Remote, :nodedowns, [])) ==
               Enum.sort([b.node, c.node, d.node])

      assert c.node in TestCluster.call(b, Remote, :nodedowns, [])
    end
  end
end
