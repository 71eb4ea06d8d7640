defmodule LibclusterDroplet.RateFloorTest do
  @moduledoc false
  # One rate-limit floor for every path to the API: a follower taking over
  # from a leader that drew a 429, followers while their leader waits one
  # out, a strategy restarted within one, and paced waits capped whatever
  # the budget says. Proven with the fake API's request log ("nothing
  # before": timers never fire early) and the strategies' own states.
  use ExUnit.Case, async: true

  import ExUnit.CaptureLog
  alias LibclusterDroplet.{Coordination, FakeAPI, Floor, Schedule, SpyMembership, TestCluster}
  alias LibclusterDroplet.TestCluster.{Remote, RemoteProbe}

  @moduletag timeout: 180_000

  @token "dop_v1_rate_floor_token_5c1d2e3f"
  @interval 300
  # Every request is answered 429 with this retry-after, far longer than a
  # follower's patience with a silent leader (2 × interval + 1 s).
  @retry_after_ms 8_000
  # Larger than any monotonic time: a follower's safety poll never comes due.
  @never 1_000_000_000_000_000
  # The fake's burst limit stays out of the way but where a test sets it.
  @open [per_minute: 1_000_000, minute_ms: 60_000]

  defp config(api, extra) do
    Keyword.merge(
      [
        token: @token,
        api_url: FakeAPI.url(api),
        polling_interval: @interval,
        max_requests_per_minute: 60_000,
        api_timeout: 5_000
      ],
      extra
    )
  end

  defp state(%{node: node, pid: pid}), do: TestCluster.call(node, :sys, :get_state, [pid])
  defp state(pid) when is_pid(pid), do: :sys.get_state(pid)

  defp remote_floor(%{node: node}, url), do: TestCluster.call(node, Floor, :not_before, [url])

  # `n` droplets with a node each, running the strategy. Returns the
  # members (`%{node, sup, pid}`, lowest-named first) once the first leads
  # and every other follows it. `opts`: `:tags` of the droplets, `:config`
  # (extra options), `:log_level` of the nodes.
  defp cluster(api, n, opts \\ []) do
    prefix = "rf#{System.unique_integer([:positive])}"

    nodes =
      for i <- 1..n do
        [address] = TestCluster.allocate_addresses(1)
        name = "#{prefix}-#{i}"
        tags = Keyword.get(opts, :tags, ["web"])

        FakeAPI.add_droplet(
          api,
          FakeAPI.droplet(id: i, name: name, private_ip: address, tags: tags)
        )

        node = TestCluster.start_node(name, address, log_level: opts[:log_level] || :error)
        on_exit(fn -> TestCluster.stop(node) end)
        node
      end

    config = config(api, Keyword.get(opts, :config, []))

    members =
      for node <- nodes do
        sup = TestCluster.start_strategy(node, :droplets, config)
        %{node: node, sup: sup, pid: TestCluster.call(node, Remote, :strategy_pid, [sup])}
      end

    TestCluster.await(fn -> TestCluster.full_mesh?(nodes) end, 20_000)
    [leader | followers] = members

    for f <- followers,
        do: TestCluster.await(fn -> state(f).coordination.leader == leader.node.node end, 30_000)

    members
  end

  # A follower's safety poll (Coordination.safety_interval/2) could draw
  # the test's 429 before the leader does; it never comes due here, so the
  # leader alone draws it.
  defp no_safety_poll(%{node: node, pid: pid}),
    do:
      TestCluster.call(node, RemoteProbe, :put_state, [
        pid,
        [:coordination, :last_api_poll_at],
        @never
      ])

  defp answer_429(api, retry_after_ms \\ @retry_after_ms),
    do: :ok = FakeAPI.set_rate_limit(api, per_minute: 0, minute_ms: retry_after_ms)

  defp first_429(api),
    do: TestCluster.await(fn -> Enum.find(FakeAPI.requests(api), &(&1.status == 429)) end, 20_000)

  defp await_200_after(api, request) do
    TestCluster.await(
      fn ->
        Enum.any?(FakeAPI.requests(api), &(&1.status == 200 and &1.at_ms > request.at_ms))
      end,
      40_000
    )
  end

  # No request, from any node, follows a 429 before its retry-after. The
  # 429's time is the API's; the floor starts later, when the answer
  # arrives, so the margin only covers the clocks of two VMs.
  defp assert_floor_held(requests) do
    for limited <- requests, limited.status == 429 do
      wait = String.to_integer(limited.headers["retry-after"]) * 1000

      for later <- requests, later.at_ms > limited.at_ms do
        assert later.unix_ms - limited.unix_ms >= wait - 50,
               "a request #{later.unix_ms - limited.unix_ms} ms after a 429 saying retry-after " <>
                 "#{wait} ms"
      end
    end

    :ok
  end

  describe "with real nodes" do
    test "a follower that takes over from a leader gone during a retry-after waits it out, then polls" do
      {:ok, api} = FakeAPI.start_link(token: @token, rate_limit: @open)
      url = FakeAPI.url(api)
      [leader, follower] = cluster(api, 2, log_level: :warning)
      no_safety_poll(follower)
      # Recorded: the leader's warning too, out of the test's output.
      for m <- [leader, follower], do: TestCluster.call(m.node, Remote, :capture_warnings, [])

      FakeAPI.reset_requests(api)
      answer_429(api)
      limited = first_429(api)
      # The leader's notice carries its floor: the follower holds the same one.
      not_before = TestCluster.await(fn -> remote_floor(leader, url) end)
      TestCluster.await(fn -> remote_floor(follower, url) == not_before end)
      # From now on the API would answer: only the floor holds requests back.
      :ok = FakeAPI.set_rate_limit(api, @open)

      polls = state(follower).schedule.polls
      TestCluster.stop(leader.node)
      # It takes over at once...
      TestCluster.await(fn -> state(follower).coordination.leader == nil end)
      # ...and its first poll goes out once the floor has passed.
      TestCluster.await(fn -> state(follower).schedule.polls > polls end, 40_000)

      requests = FakeAPI.requests(api)
      assert_floor_held(requests)
      assert Enum.count(requests, &(&1.status == 429)) == 1
      assert Enum.any?(requests, &(&1.status == 200 and &1.at_ms > limited.at_ms))
      # It waited for the floor rather than trying and being refused: no
      # poll of its own failed.
      warnings = TestCluster.call(follower.node, Remote, :warnings, [])
      refute Enum.any?(warnings, &(&1 =~ "poll failed")), inspect(warnings)
    end

    test "followers send nothing while the leader waits out a retry-after longer than 2 × interval + 1 s" do
      assert @retry_after_ms > Coordination.stale_after(@interval)
      {:ok, api} = FakeAPI.start_link(token: @token, rate_limit: @open)
      url = FakeAPI.url(api)
      [leader | followers] = cluster(api, 3)
      Enum.each(followers, &no_safety_poll/1)
      before = Map.new(followers, &{&1.node.node, state(&1).schedule})

      FakeAPI.reset_requests(api)
      answer_429(api)
      limited = first_429(api)
      not_before = TestCluster.await(fn -> remote_floor(leader, url) end)

      # The leader's notice carries its floor and the wait before its next
      # poll, by which followers judge its silence.
      for f <- followers do
        TestCluster.await(fn ->
          remote_floor(f, url) == not_before and
            state(f).coordination.leader_interval > Coordination.stale_after(@interval)
        end)
      end

      :ok = FakeAPI.set_rate_limit(api, @open)
      # The leader's next poll, after the floor.
      await_200_after(api, limited)

      requests = FakeAPI.requests(api)
      assert_floor_held(requests)
      assert Enum.count(requests, &(&1.status == 429)) == 1

      for f <- followers do
        s = state(f)
        assert s.coordination.leader == leader.node.node
        # Not one poll of its own, failed or not.
        assert s.schedule.polls == before[f.node.node].polls
        assert s.schedule.failures == 0
      end
    end

    # A floor travels only from the leader to its followers today: this
    # fails until a floor a follower's response sets reaches the leader too.
    test "a 429 a follower draws (its safety poll) holds the leader too" do
      {:ok, api} = FakeAPI.start_link(token: @token, rate_limit: @open)
      url = FakeAPI.url(api)
      # The leader polls every 2 s: room to slip the follower's poll in between.
      [leader, follower] = cluster(api, 2, config: [polling_interval: 2_000])
      no_safety_poll(follower)

      # Right after one of the leader's polls...
      count = FakeAPI.request_count(api)
      TestCluster.await(fn -> FakeAPI.request_count(api) > count end)
      FakeAPI.reset_requests(api)
      answer_429(api)

      # ...the follower's safety poll comes due (its tick, delivered with the
      # ref it waits for, is taken up once nothing else is in flight) and
      # draws the 429.
      TestCluster.await(fn ->
        TestCluster.call(follower.node, RemoteProbe, :put_state, [
          follower.pid,
          [:coordination, :last_api_poll_at],
          -@never
        ])

        {ref, _} = state(follower).timers.tick

        TestCluster.call(follower.node, :erlang, :send, [
          follower.pid,
          {:droplet_timer, :tick, ref}
        ])

        s = state(follower)
        is_struct(s.phase, Cluster.Strategy.Droplet.Poll) or s.schedule.failures > 0
      end)

      limited = first_429(api)
      TestCluster.await(fn -> state(follower).schedule.failures == 1 end)
      assert remote_floor(follower, url) != nil
      :ok = FakeAPI.set_rate_limit(api, @open)

      # The leader's next poll waits for that floor as well.
      await_200_after(api, limited)
      assert_floor_held(FakeAPI.requests(api))
      assert remote_floor(leader, url) >= remote_floor(follower, url)
    end

    test "a paced wait is capped at 15 minutes, and the leader announces the capped wait" do
      # One listing per tag: each poll sends 10 requests.
      tags = for i <- 0..9, do: "t#{i}"
      {:ok, api} = FakeAPI.start_link(token: @token, rate_limit: @open)
      [leader, follower] = cluster(api, 2, tags: ["t0"], config: [tag_name: tags])
      no_safety_poll(follower)

      # 48 an hour: once fewer than a quarter (12) remain, 2 to 11 do (the
      # poll before left 12 or more, and each takes 10), never 0. Paced
      # over the hour left until the reset, the wait would be at least
      # 3600 s × 10 / 11, and 3601 s capped at the reset: far over 15 minutes.
      :ok = FakeAPI.set_rate_limit(api, per_hour: 48)

      TestCluster.await(
        fn -> state(follower).coordination.leader_interval == Schedule.max_paced_wait() end,
        30_000
      )

      %{timers: %{tick: {_ref, timer}}, schedule: schedule} = state(leader)
      assert schedule.rate_limit.remaining * 4 < 48
      left = TestCluster.call(leader.node, Process, :read_timer, [timer])
      assert is_integer(left) and left <= Schedule.max_paced_wait()

      # That budget's reset was indeed more than 15 minutes away.
      low =
        Enum.find(
          FakeAPI.requests(api),
          &(&1.headers["ratelimit-remaining"] == "#{schedule.rate_limit.remaining}")
        )

      until_reset = String.to_integer(low.headers["ratelimit-reset"]) * 1000 - low.unix_ms
      assert until_reset > Schedule.max_paced_wait() + 60_000
    end
  end

  describe "in this VM" do
    defp droplets,
      do:
        for(i <- 1..2, do: FakeAPI.droplet(id: i, name: "f-#{i}", private_ip: "127.0.7.#{i + 1}"))

    # A strategy with spy membership under a supervisor of its own, which
    # restarts it when it is killed.
    defp start_restartable(api, extra \\ []) do
      spy = SpyMembership.start()
      topology = :"floor_#{System.unique_integer([:positive])}"

      child =
        {Cluster.Strategy.Droplet,
         [topology: topology, config: config(api, extra)] ++ SpyMembership.mfas(spy)}

      {:ok, sup} = Supervisor.start_link([child], strategy: :one_for_one, max_restarts: 10)
      on_exit(fn -> Process.exit(sup, :shutdown) end)
      TestCluster.await(fn -> length(SpyMembership.connected(spy)) == 2 end)
      %{sup: sup, spy: spy, topology: topology}
    end

    defp failed_polls(log, topology),
      do:
        log
        |> String.split("\n")
        |> Enum.count(&(&1 =~ "[libcluster:#{topology}] DigitalOcean API poll failed"))

    test "a strategy killed during a retry-after is restarted by its supervisor and waits it out" do
      {:ok, api} = FakeAPI.start_link(token: @token, droplets: droplets(), rate_limit: @open)
      ctx = start_restartable(api)
      pid = Remote.strategy_pid(ctx.sup)

      log =
        capture_log(fn ->
          FakeAPI.reset_requests(api)
          answer_429(api, 5_000)
          TestCluster.await(fn -> state(pid).schedule.failures >= 1 end, 20_000)
          Process.exit(pid, :kill)

          successor =
            TestCluster.await(fn ->
              Remote.strategy_pid(ctx.sup) not in [nil, pid] and Remote.strategy_pid(ctx.sup)
            end)

          :ok = FakeAPI.set_rate_limit(api, @open)
          TestCluster.await(fn -> state(successor).schedule.polls >= 1 end, 40_000)
        end)

      requests = FakeAPI.requests(api)
      assert_floor_held(requests)
      assert [_limited] = Enum.filter(requests, &(&1.status == 429))
      # The predecessor's 429 only: the successor never tried before the floor.
      assert failed_polls(log, ctx.topology) == 1
    end

    test "a floor drawn by list_droplets/1 (explain's listing) holds a running strategy's tick and its restart" do
      {:ok, api} = FakeAPI.start_link(token: @token, droplets: droplets(), rate_limit: @open)
      url = FakeAPI.url(api)
      # Polls once at start, then not for a minute unless told.
      ctx = start_restartable(api, polling_interval: 60_000)
      pid = Remote.strategy_pid(ctx.sup)

      log =
        capture_log(fn ->
          answer_429(api, 5_000)
          FakeAPI.reset_requests(api)

          assert LibclusterDroplet.list_droplets(token: @token, api_url: url) ==
                   {:error, {:rate_limited, 5}}

          assert Floor.wait(url) > 0
          # The API would answer now: only the floor holds requests back.
          :ok = FakeAPI.set_rate_limit(api, @open)

          # A tick: it waits for the floor (5 s at most), not the interval.
          {ref, _timer} = state(pid).timers.tick
          send(pid, {:droplet_timer, :tick, ref})
          %{timers: %{tick: {_, timer}}, phase: nil} = state(pid)
          left = Process.read_timer(timer)
          assert is_integer(left) and left <= 5_000

          # Killed: its successor starts with no backoff of its own to keep,
          # and still waits for the floor.
          Process.exit(pid, :kill)

          successor =
            TestCluster.await(fn ->
              Remote.strategy_pid(ctx.sup) not in [nil, pid] and Remote.strategy_pid(ctx.sup)
            end)

          assert state(successor).schedule.next_poll_at == nil
          TestCluster.await(fn -> state(successor).schedule.polls >= 1 end, 40_000)
          assert state(successor).schedule.failures == 0
        end)

      requests = FakeAPI.requests(api)
      assert_floor_held(requests)
      assert [%{status: 429}, %{status: 200} | _] = requests
      assert failed_polls(log, ctx.topology) == 0
    end

    test "a paced wait never runs past the budget's reset (plus 1 s)" do
      tags = for i <- 0..9, do: "t#{i}"

      {:ok, api} =
        FakeAPI.start_link(
          token: @token,
          droplets: [FakeAPI.droplet(id: 1, name: "p-1", private_ip: "127.0.7.9", tags: ["t0"])],
          rate_limit: [per_hour: 16, hour_ms: 120_000] ++ @open
        )

      url = FakeAPI.url(api)
      # Another client of the token spends 5: the strategy's first poll (10
      # listings, one per tag) leaves 1, and the budget refills in 2 minutes.
      for _ <- 1..5,
          do:
            {:ok, _} =
              LibclusterDroplet.list_droplets(token: @token, api_url: url, tag_name: "t0")

      spy = SpyMembership.start()

      pid =
        start_supervised!(
          {Cluster.Strategy.Droplet,
           [topology: :paced_reset, config: config(api, tag_name: tags)] ++
             SpyMembership.mfas(spy)}
        )

      TestCluster.await(fn -> state(pid).schedule.polls == 1 end)
      %{timers: %{tick: {_ref, timer}}, schedule: schedule} = state(pid)
      left = Process.read_timer(timer)
      assert schedule.rate_limit.remaining == 1
      [last] = Enum.filter(FakeAPI.requests(api), &(&1.headers["ratelimit-remaining"] == "1"))
      until_reset = String.to_integer(last.headers["ratelimit-reset"]) * 1000 - last.unix_ms

      # 10 requests spread over what remains would be 10 × the time to the
      # reset; capped there (+ 1 s), well under the 15-minute cap.
      assert left <= until_reset + 1_000 + 50
      assert left > 60_000
      assert until_reset + 1_000 < Schedule.max_paced_wait()
    end
  end
end
