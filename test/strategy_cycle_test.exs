defmodule Cluster.Strategy.DropletCycleTest do
  @moduledoc false
  # The strategy's cycle: timers that cannot be lost, watchdogs, shares
  # (versions, order, topology), stored state across restarts, options that
  # must take effect, and connects that run off the strategy process.
  use ExUnit.Case, async: true

  import ExUnit.CaptureLog
  alias Cluster.Strategy.Droplet.ShareCheck
  alias LibclusterDroplet.{Coordination, FakeAPI, Floor, Share, SpyMembership, Store, TestCluster}
  alias LibclusterDroplet.TestCluster.Remote

  @moduletag timeout: 120_000

  @token "dop_v1_cycle_test_token_0123456789abcdef"
  @interval 100

  defp droplets(n) do
    for i <- 1..n do
      FakeAPI.droplet(id: i, name: "node-#{i}", private_ip: "127.0.3.#{i + 1}")
    end
  end

  defp nodes(n), do: for(i <- 1..n, do: :"node-#{i}@127.0.3.#{i + 1}")

  defp config(api, extra \\ []) do
    Keyword.merge(
      [
        token: @token,
        api_url: FakeAPI.url(api),
        polling_interval: @interval,
        max_backoff: 400,
        # Ample on a busy machine: a timeout would be a failure of its own.
        api_timeout: 5_000,
        max_requests_per_minute: 60_000
      ],
      extra
    )
  end

  # A strategy in this (non-distributed) VM with spy membership.
  defp start_local(api, extra \\ [], opts \\ []) do
    topology =
      Keyword.get_lazy(opts, :topology, fn -> :"cycle_#{System.unique_integer([:positive])}" end)

    spy = Keyword.get_lazy(opts, :spy, &SpyMembership.start/0)
    mfas = Keyword.get(opts, :mfas, SpyMembership.mfas(spy))

    pid =
      start_supervised!(
        {Cluster.Strategy.Droplet, [topology: topology, config: config(api, extra)] ++ mfas},
        id: topology,
        restart: :permanent
      )

    %{topology: topology, spy: spy, pid: pid}
  end

  defp state(pid), do: :sys.get_state(pid)

  # A share's version 3 wire form, its verdicts made from `droplets` as its
  # sender's pipeline would.
  defp encode(%Share{droplets: droplets, from: from} = share) do
    listed = for {name, address} <- droplets, do: %{name: name, status: :active, address: address}
    {:ok, verdicts} = LibclusterDroplet.Pipeline.from_listing(listed, %{}, from)
    [v3 | _] = Share.encode(%{share | droplets: nil, verdicts: verdicts})
    v3
  end

  defp stored(topology) do
    case :ets.lookup(Store, {:topology, topology}) do
      [{_, entry}] -> entry
      [] -> nil
    end
  end

  # A strategy with spy membership under a supervisor of its own, which
  # restarts it when it is killed. Returns {supervisor, spy}.
  defp start_restartable(api) do
    spy = SpyMembership.start()
    topology = :"restartable_#{System.unique_integer([:positive])}"

    child =
      {Cluster.Strategy.Droplet,
       [topology: topology, config: config(api)] ++ SpyMembership.mfas(spy)}

    {:ok, sup} = Supervisor.start_link([child], strategy: :one_for_one)
    {sup, spy}
  end

  describe "timers" do
    test "a tick is armed at every moment, whatever is in flight" do
      {:ok, api} = FakeAPI.start_link(token: @token, droplets: droplets(2))
      FakeAPI.inject(api, {:slow, 300}, times: :infinity)
      ctx = start_local(api, health_check: {:tcp, port: 1, timeout: 50})

      samples =
        for _ <- 1..40 do
          Process.sleep(20)
          state = state(ctx.pid)
          {Map.has_key?(state.timers, :tick), state.phase && Map.get(state.phase, :stage)}
        end

      assert Enum.all?(samples, &elem(&1, 0)), inspect(samples)
      # Sampled while listings were in flight, not only between them.
      assert Enum.any?(samples, &(elem(&1, 1) == :listing))
    end

    test "a lost NIF reply is caught by the watchdog, for listings and for probes" do
      {:ok, api} = FakeAPI.start_link(token: @token, droplets: droplets(2))
      # A black hole: the probe takes its whole timeout.
      [hole] = TestCluster.allocate_addresses(1)
      sockets = TestCluster.black_hole(hole, 4_000)
      on_exit(fn -> Enum.each(sockets, &:gen_tcp.close/1) end)
      FakeAPI.put_droplets(api, [FakeAPI.droplet(id: 9, name: "hole", private_ip: hole)])

      ctx = start_local(api, health_check: {:tcp, port: 4_000, timeout: 1_000})

      capture_log(fn ->
        # The probe's reply will carry a ref the strategy no longer waits for.
        TestCluster.await(fn -> match?(%{phase: %{stage: :probing}}, state(ctx.pid)) end, 10_000)

        :sys.replace_state(ctx.pid, fn state -> put_in(state.phase.call.ref, make_ref()) end)
        TestCluster.await(fn -> state(ctx.pid).schedule.failures >= 1 end, 20_000)
      end)
      |> then(&assert(&1 =~ "poll failed (timeout)"))

      assert Process.alive?(ctx.pid)
      assert Map.has_key?(state(ctx.pid).timers, :tick)
    end
  end

  describe "options that must take effect" do
    test "stretch: while the budget is low and falling the interval doubles, and it halves back" do
      {:ok, api} =
        FakeAPI.start_link(
          token: @token,
          droplets: droplets(2),
          rate_limit: [per_hour: 60, hour_ms: 20_000]
        )

      ctx = start_local(api)
      # Below a quarter (15) remaining, each poll lowers it: 2, 4...
      TestCluster.await(fn -> state(ctx.pid).schedule.stretch >= 4 end, 30_000)
      stretched = state(ctx.pid).schedule.stretch

      # The budget is back: the next response halves the factor, and with
      # plenty remaining nothing else slows polling, so the gap after that
      # response is the stretched interval itself.
      :ok = FakeAPI.set_rate_limit(api, per_hour: 60, hour_ms: 20_000)
      FakeAPI.reset_requests(api)
      TestCluster.await(fn -> FakeAPI.request_count(api) >= 2 end, 30_000)
      [first, second | _] = FakeAPI.requests(api)
      assert String.to_integer(first.headers["ratelimit-remaining"]) * 4 >= 60
      assert second.at_ms - first.at_ms >= div(stretched, 2) * @interval
    end

    test "keep_alive: every listing asks the NIF to keep idle connections for the longest gap between polls" do
      {:ok, api} = FakeAPI.start_link(token: @token, droplets: droplets(1))
      %{pid: pid} = start_local(api, max_backoff: 60_000)
      :erlang.trace_pattern({LibclusterDroplet, :start_list_droplets, 1}, true, [:local])
      :erlang.trace(pid, true, [:call, {:tracer, self()}])

      # The next poll's request (this map holds the token: only its keep-alive is shown).
      assert_receive {:trace, ^pid, :call, {LibclusterDroplet, :start_list_droplets, [request]}},
                     5_000

      :erlang.trace(pid, false, [:call])
      assert request.keep_alive_ms == LibclusterDroplet.Schedule.keep_alive(@interval, 60_000)
      assert request.keep_alive_ms == 60_000
    end

    test "coordinate: false: every node polls on its own" do
      {:ok, api} = FakeAPI.start_link(token: @token)
      prefix = "nc#{System.unique_integer([:positive])}"

      nodes =
        for i <- 1..3 do
          [address] = TestCluster.allocate_addresses(1)
          name = "#{prefix}-#{i}"
          FakeAPI.add_droplet(api, FakeAPI.droplet(id: i, name: name, private_ip: address))
          node = TestCluster.start_node(name, address)
          on_exit(fn -> TestCluster.stop(node) end)
          node
        end

      started =
        for n <- nodes,
            do:
              {n,
               TestCluster.start_strategy(
                 n,
                 :droplets,
                 config(api, coordinate: false, polling_interval: 200)
               )}

      TestCluster.await(fn -> TestCluster.full_mesh?(nodes) end, 15_000)

      polls = fn ->
        for {n, sup} <- started do
          pid = TestCluster.call(n, Remote, :strategy_pid, [sup])
          TestCluster.call(n, :sys, :get_state, [pid])
        end
      end

      before = polls.()
      assert Enum.all?(before, &(&1.coordination.enabled? == false))
      # Every node keeps polling the API itself: a follower would not.
      TestCluster.await(fn ->
        Enum.zip(before, polls.())
        |> Enum.all?(fn {a, b} -> b.schedule.polls >= a.schedule.polls + 3 end)
      end)

      assert Enum.all?(polls.(), &(&1.coordination.leader == nil))
    end
  end

  describe "stored state" do
    test "is erased on shutdown and kept across a kill" do
      {:ok, api} = FakeAPI.start_link(token: @token, droplets: droplets(2))
      {sup, spy} = start_restartable(api)
      pid = Remote.strategy_pid(sup)
      TestCluster.await(fn -> SpyMembership.connected(spy) == nodes(2) end)
      topology = state(pid).topology
      assert %Store.Entry{managed: managed} = stored(topology)
      assert Enum.sort(managed) == nodes(2)

      # Killed: the next incarnation adopts it.
      capture_log(fn ->
        Process.exit(pid, :kill)
        TestCluster.await(fn -> Remote.strategy_pid(sup) not in [nil, pid] end)
      end)

      assert %Store.Entry{managed: ^managed} = stored(topology)
      assert state(Remote.strategy_pid(sup)).members.managed == managed

      # Shut down normally: erased.
      :ok = Supervisor.stop(sup)
      assert stored(topology) == nil
    end

    test "another configuration under the same topology starts afresh" do
      {:ok, api} = FakeAPI.start_link(token: @token, droplets: droplets(2))
      topology = :"reconf_#{System.unique_integer([:positive])}"
      ctx = start_local(api, [], topology: topology)
      TestCluster.await(fn -> SpyMembership.connected(ctx.spy) == nodes(2) end)
      assert %Store.Entry{managed: old, fingerprint: old_fingerprint} = entry = stored(topology)
      assert MapSet.size(old) == 2
      stop_supervised(topology)

      # As a killed strategy leaves it: a strategy with another tag must not adopt it.
      :ets.insert(Store, {{:topology, topology}, entry})
      FakeAPI.inject(api, {:status, 503}, times: :infinity)
      ctx = start_local(api, [tag_name: "other"], topology: topology)
      assert MapSet.size(state(ctx.pid).members.managed) == 0
      # Its own entry replaces the old one at its first (failed) poll.
      TestCluster.await(fn -> stored(topology).fingerprint != old_fingerprint end)
    end

    test "retry-after and backoff are kept across a restart" do
      {:ok, api} = FakeAPI.start_link(token: @token, droplets: droplets(2))
      {sup, spy} = start_restartable(api)
      on_exit(fn -> Process.exit(sup, :shutdown) end)
      TestCluster.await(fn -> SpyMembership.connected(spy) == nodes(2) end)

      capture_log(fn ->
        # The fake API's 429 says retry-after: 1.
        FakeAPI.inject(api, {:status, 429})
        pid = Remote.strategy_pid(sup)
        TestCluster.await(fn -> state(pid).schedule.failures >= 1 end, 10_000)
        Process.exit(pid, :kill)
        # Its successor starts where it left off, before its first poll.
        successor =
          TestCluster.await(fn ->
            Remote.strategy_pid(sup) not in [nil, pid] and Remote.strategy_pid(sup)
          end)

        assert state(successor).schedule.failures >= 1

        TestCluster.await(
          fn -> Enum.count(FakeAPI.requests(api), &(&1.status == 200)) >= 3 end,
          10_000
        )
      end)

      requests = FakeAPI.requests(api)
      [limited] = Enum.filter(requests, &(&1.status == 429))
      after_429 = Enum.filter(requests, &(&1.at_ms > limited.at_ms))
      assert after_429 != []
      # The restarted strategy waited it out too (send_after never fires early).
      assert Enum.all?(after_429, &(&1.unix_ms - limited.unix_ms >= 1_000)),
             inspect(Enum.map(after_429, &(&1.unix_ms - limited.unix_ms)))
    end
  end

  describe "membership" do
    test "a failed disconnect is kept and retried until it succeeds" do
      {:ok, api} = FakeAPI.start_link(token: @token, droplets: droplets(3))
      spy = SpyMembership.start()
      {:ok, refusals} = Agent.start(fn -> 2 end)

      mfas =
        Keyword.put(
          SpyMembership.mfas(spy),
          :disconnect,
          {__MODULE__, :flaky_disconnect, [spy, refusals]}
        )

      ctx = start_local(api, [], spy: spy, mfas: mfas)
      TestCluster.await(fn -> SpyMembership.connected(spy) == nodes(3) end)

      capture_log(fn ->
        FakeAPI.remove_droplet(api, 3)
        TestCluster.await(fn -> SpyMembership.connected(spy) == nodes(2) end, 20_000)
      end)

      assert Agent.get(refusals, & &1) == 0

      assert Enum.count(SpyMembership.events(spy), &(&1 == {:disconnect, List.last(nodes(3))})) ==
               1

      assert state(ctx.pid).members.removing == %{}
    end

    test "an unreachable node is retried on its own backoff, not on every poll" do
      {:ok, api} = FakeAPI.start_link(token: @token, droplets: droplets(2))
      spy = SpyMembership.start()
      {:ok, attempts} = Agent.start(fn -> [] end)

      mfas =
        Keyword.put(
          SpyMembership.mfas(spy),
          :connect,
          {__MODULE__, :refuse_node_2, [spy, attempts]}
        )

      capture_log(fn ->
        ctx = start_local(api, [max_backoff: 60_000], spy: spy, mfas: mfas)

        TestCluster.await(
          fn ->
            Agent.get(attempts, &Enum.count(&1, fn {n, _} -> n == :"node-2@127.0.3.3" end)) >= 4
          end,
          30_000
        )

        assert state(ctx.pid).schedule.polls >= 4
        assert SpyMembership.connected(spy) == [:"node-1@127.0.3.2"]
      end)

      times =
        attempts
        |> Agent.get(&Enum.reverse/1)
        |> Enum.filter(&(elem(&1, 0) == :"node-2@127.0.3.3"))
        |> Enum.map(&elem(&1, 1))

      # After its n-th failure it waits at least the lower bound of
      # Schedule.backoff/3: max(interval, min(max_backoff, interval × 2^n) / 2).
      # A machine under load only makes these gaps longer.
      for {[before, next], n} <- times |> Enum.chunk_every(2, 1, :discard) |> Enum.with_index(1) do
        floor = max(@interval, div(min(60_000, @interval * Integer.pow(2, n)), 2))

        assert next - before >= floor,
               "retry #{n} after #{next - before} ms, backoff floor #{floor} ms"
      end
    end

    test "a connect abandoned when its droplet went away is watched: if it succeeds anyway, the node is removed" do
      {:ok, api} = FakeAPI.start_link(token: @token, droplets: droplets(2))
      spy = SpyMembership.start()
      {:ok, gate} = Agent.start(fn -> :closed end)
      gated = :"node-2@127.0.3.3"

      mfas =
        Keyword.put(SpyMembership.mfas(spy), :connect, {__MODULE__, :gated_connect, [spy, gate]})

      ctx = start_local(api, [], spy: spy, mfas: mfas)

      # node-2's connect hangs (like a slow handshake) while its droplet goes.
      TestCluster.await(fn ->
        gated in LibclusterDroplet.Connector.nodes(state(ctx.pid).members.connector)
      end)

      FakeAPI.remove_droplet(api, 2)
      TestCluster.await(fn -> gated in Map.values(state(ctx.pid).members.abandoned) end)

      capture_log(fn ->
        Agent.update(gate, fn _ -> :open end)
        TestCluster.await(fn -> {:disconnect, gated} in SpyMembership.events(spy) end)
      end)

      assert SpyMembership.connected(spy) == [:"node-1@127.0.3.2"]
      assert state(ctx.pid).members.abandoned == %{}
    end
  end

  @doc false
  # Connects like the spy, but a connect to node-2 waits until `gate` opens.
  def gated_connect(spy, gate, node) do
    if node == :"node-2@127.0.3.3", do: await_gate(gate)
    SpyMembership.connect(spy, node)
  end

  defp await_gate(gate) do
    if Agent.get(gate, & &1) != :open do
      Process.sleep(10)
      await_gate(gate)
    end
  end

  @doc false
  def flaky_disconnect(spy, refusals, node) do
    if Agent.get_and_update(refusals, &{&1, max(&1 - 1, 0)}) > 0,
      do: {:error, :busy},
      else: SpyMembership.disconnect(spy, node)
  end

  @doc false
  def refuse_node_2(spy, attempts, node) do
    Agent.update(attempts, &[{node, System.monotonic_time(:millisecond)} | &1])
    if node == :"node-2@127.0.3.3", do: false, else: SpyMembership.connect(spy, node)
  end

  # A node running the strategy with spy membership, its warnings captured.
  # It polls once, then not for a minute; its health check's port drops
  # SYNs at a second address `x`, so each probe of x takes its 2 s timeout.
  defp start_checking_node(api, prefix) do
    [address, x] = TestCluster.allocate_addresses(2)
    name = "#{prefix}#{System.unique_integer([:positive])}"
    FakeAPI.add_droplet(api, FakeAPI.droplet(id: 1, name: name, private_ip: address))
    node = TestCluster.start_node(name, address, log_level: :warning)
    on_exit(fn -> TestCluster.stop(node) end)
    TestCluster.call(node, Remote, :capture_warnings, [])
    spy = TestCluster.call(node, SpyMembership, :start, [])
    port = 20_000 + rem(System.unique_integer([:positive]), 20_000)
    sockets = TestCluster.black_hole(x, port)
    on_exit(fn -> Enum.each(sockets, &:gen_tcp.close/1) end)

    config =
      config(api, polling_interval: 60_000, health_check: {:tcp, port: port, timeout: 2_000})

    sup = TestCluster.start_strategy(node, :t, config, SpyMembership.mfas(spy))
    pid = TestCluster.call(node, Remote, :strategy_pid, [sup])
    get = fn -> TestCluster.call(node, :sys, :get_state, [pid]) end
    TestCluster.await(fn -> get.().schedule.polls >= 1 end)
    %{node: node, name: name, address: address, x: x, pid: pid, get: get}
  end

  # A share from a leader named lower than any test node, as the wire carries it.
  defp leader_share(get, listed_at, seq, droplets) do
    encode(%Share{
      topology: :t,
      from: :"0-leader@127.0.0.1",
      fingerprint: get.().coordination.fingerprint,
      interval: 60_000,
      seq: seq,
      listed_at: listed_at,
      droplets: droplets
    })
  end

  test "a share check that never answers is given up by its watchdog; the newest queued share is checked next" do
    {:ok, api} = FakeAPI.start_link(token: @token)

    %{node: node, name: name, address: address, x: x, pid: pid, get: get} =
      start_checking_node(api, "wd")

    # x's health port drops SYNs: each check of a share listing x takes 2 s.
    FakeAPI.inject(api, {:status, 503}, times: :infinity)
    later = System.system_time(:millisecond) + 600_000

    share = &leader_share(get, later, &1, [{name, address}, {"x", x}])

    send_share = &TestCluster.call(node, :erlang, :send, [Coordination.registered_name(:t), &1])
    send_share.(share.(1))

    TestCluster.await(fn ->
      match?(%{phase: %ShareCheck{share: %{listed_at: ^later, seq: 1}}}, get.())
    end)

    # Queued while the first is checked: the newest is kept, whatever the order.
    send_share.(share.(3))
    send_share.(share.(2))
    TestCluster.await(fn -> match?(%Share{seq: 3}, get.().pending_share) end)

    # The first check's answer is lost: only the watchdog can end it.
    TestCluster.call(node, Remote, :lose_check_reply, [pid])
    TestCluster.await(fn -> get.().view[:key] == {later, 3} end, 30_000)

    assert Enum.any?(
             TestCluster.call(node, Remote, :warnings, []),
             &(&1 =~ "health checks of a shared view failed: no answer in time")
           )
  end

  test "a share no newer than the view applied is not even health-checked" do
    {:ok, api} = FakeAPI.start_link(token: @token)
    %{node: node, name: name, address: address, x: x, get: get} = start_checking_node(api, "old")
    {listed_at, seq} = get.().view.key

    # Listing x, whose check would hold a %ShareCheck{} for 2 s.
    share = leader_share(get, listed_at, seq, [{name, address}, {"x", x}])

    # Sent from the node, so that it is handled before get.()'s call.
    TestCluster.call(node, :erlang, :send, [Coordination.registered_name(:t), share])
    state = get.()
    refute match?(%ShareCheck{}, state.phase)
    assert state.pending_share == nil
    assert state.view.key == {listed_at, seq}
  end

  test "a share check given up by its watchdog is cancelled: its probes stop" do
    {:ok, api} = FakeAPI.start_link(token: @token)
    # Polls once, then not for a minute: nothing but the watchdog's own
    # cancel can stop the check below.
    %{node: node, name: name, address: address, x: x, pid: pid, get: get} =
      start_checking_node(api, "cx")

    threads = fn -> TestCluster.call(node, Remote, :nif_threads, []) end
    TestCluster.await(fn -> threads.() == 0 end)

    # With no helper thread free on that node, the check probes 20 black
    # holes one at a time: 40 s, and a watchdog of 45 s.
    {holder, 1_024} = TestCluster.call(node, Remote, :hold_helpers, [])
    later = System.system_time(:millisecond) + 600_000

    share =
      encode(%Share{
        topology: :t,
        from: :"0-leader@127.0.0.1",
        fingerprint: get.().coordination.fingerprint,
        interval: 60_000,
        seq: 1,
        listed_at: later,
        droplets: [{name, address} | for(i <- 1..20, do: {"x#{i}", x})]
      })

    TestCluster.call(node, :erlang, :send, [Coordination.registered_name(:t), share])

    TestCluster.await(fn ->
      match?(%{phase: %ShareCheck{share: %{listed_at: ^later, seq: 1}}}, get.())
    end)

    TestCluster.await(fn -> threads.() == 1 end)

    # Held here too: dropped by the strategy, garbage collection alone
    # would cancel it sooner or later.
    call_holder = TestCluster.call(node, Remote, :hold_check_call, [pid])
    # The watchdog fires now rather than in 45 s.
    {ref, _timer} = get.().timers.watchdog
    TestCluster.call(node, :erlang, :send, [pid, {:droplet_timer, :watchdog, ref}])
    TestCluster.await(fn -> get.().phase == nil end)

    # The probe in flight ends by its 2 s timeout; the 19 others never start.
    TestCluster.await(fn -> threads.() == 0 end, 20_000)
    TestCluster.call(node, :erlang, :send, [call_holder, :release])
    TestCluster.call(node, Remote, :release_helpers, [holder])
  end

  describe "shares" do
    setup do
      {:ok, api} = FakeAPI.start_link(token: @token)
      [address, x, y] = TestCluster.allocate_addresses(3)
      name = "sh#{System.unique_integer([:positive])}"
      FakeAPI.add_droplet(api, FakeAPI.droplet(id: 1, name: name, private_ip: address))
      node = TestCluster.start_node(name, address, log_level: :warning)
      on_exit(fn -> TestCluster.stop(node) end)
      spy = TestCluster.call(node, SpyMembership, :start, [])
      TestCluster.call(node, Remote, :capture_warnings, [])
      # Polls rarely: the shares below decide membership.
      sup =
        TestCluster.start_strategy(
          node,
          :t,
          config(api, polling_interval: 60_000),
          SpyMembership.mfas(spy)
        )

      pid = TestCluster.call(node, Remote, :strategy_pid, [sup])
      get = fn -> TestCluster.call(node, :sys, :get_state, [pid]) end
      TestCluster.await(fn -> get.().schedule.polls >= 1 end)
      # From now on only the shares below can change membership: the node's
      # own polls (when it takes over from the made-up leader) fail.
      FakeAPI.inject(api, {:status, 503}, times: :infinity)

      share = fn fields ->
        state = get.()

        %Share{
          topology: :t,
          from: :"0-leader@127.0.0.1",
          fingerprint: state.coordination.fingerprint,
          interval: 60_000,
          seq: 1,
          listed_at: System.system_time(:millisecond),
          droplets: [{name, address}]
        }
        |> struct(fields)
      end

      send_share = fn message ->
        TestCluster.call(node, :erlang, :send, [Coordination.registered_name(:t), message])
      end

      {:ok,
       api: api,
       node: node,
       spy: spy,
       get: get,
       share: share,
       send_share: send_share,
       self_droplet: {name, address},
       x: {"x", x},
       y: {"y", y}}
    end

    defp managed(ctx), do: ctx.get.().members.managed |> Enum.map(&to_string/1) |> Enum.sort()

    test "a newer share is applied; an older one never undoes it", ctx do
      later = System.system_time(:millisecond) + 600_000
      {_, x} = ctx.x
      {_, y} = ctx.y
      x_node = :"x@#{x}"
      events = fn -> TestCluster.call(ctx.node, SpyMembership, :events, [ctx.spy]) end

      ctx.send_share.(encode(ctx.share.(listed_at: later, droplets: [ctx.self_droplet, ctx.x])))

      TestCluster.await(fn -> {:connect, x_node} in events.() end)

      # Older by time (though with a higher count), then older by count:
      # applying either would disconnect x.
      ctx.send_share.(
        encode(ctx.share.(listed_at: later - 1, seq: 9, droplets: [ctx.self_droplet, ctx.y]))
      )

      ctx.send_share.(encode(ctx.share.(listed_at: later, seq: 0, droplets: [ctx.self_droplet])))

      # Newer: once it is in, the two before it were judged.
      ctx.send_share.(
        encode(ctx.share.(listed_at: later, seq: 2, droplets: [ctx.self_droplet, ctx.x, ctx.y]))
      )

      TestCluster.await(fn -> ctx.get.().view[:key] == {later, 2} end)
      assert managed(ctx) == ["x@#{x}", "y@#{y}"]
      refute Enum.any?(events.(), &match?({:disconnect, _}, &1)), inspect(events.())

      ctx.send_share.(
        encode(ctx.share.(listed_at: later + 1, droplets: [ctx.self_droplet, ctx.y]))
      )

      TestCluster.await(fn -> managed(ctx) == ["y@#{y}"] end)
      TestCluster.await(fn -> {:disconnect, x_node} in events.() end)
    end

    test "casts, calls and messages it does not know leave it running as it was", ctx do
      pid = TestCluster.call(ctx.node, Process, :whereis, [Coordination.registered_name(:t)])
      before = ctx.get.()
      name = Coordination.registered_name(:t)

      TestCluster.call(ctx.node, GenServer, :cast, [name, {:droplet_timer, :tick, make_ref()}])
      TestCluster.call(ctx.node, GenServer, :cast, [name, :anything])

      assert TestCluster.call(ctx.node, GenServer, :call, [name, :anything]) ==
               {:error, :unknown_call}

      ctx.send_share.({:libcluster_droplet_share})

      assert TestCluster.call(ctx.node, Process, :alive?, [pid])
      assert ctx.get.().members == before.members
    end

    test "a share's floor far ahead is held for an hour at most; taking over then arms its tick",
         ctx do
      pid = TestCluster.call(ctx.node, Process, :whereis, [Coordination.registered_name(:t)])
      far = System.system_time(:millisecond) + 100 * 86_400_000
      ctx.send_share.(encode(ctx.share.(interval: 100, not_before: far)))

      # The made-up leader is unreachable: this node takes over within the floor.
      TestCluster.await(fn ->
        state = ctx.get.()
        state.view.source == {:share, :"0-leader@127.0.0.1"} and state.coordination.leader == nil
      end)

      floor = TestCluster.call(ctx.node, Floor, :not_before, [ctx.get.().config.api_url])
      assert floor <= System.system_time(:millisecond) + Floor.longest()
      assert TestCluster.call(ctx.node, Process, :alive?, [pid])
      assert %{tick: {_, _}} = ctx.get.().timers
    end

    test "after taking over from a leader whose clock runs ahead, its own polls are applied",
         ctx do
      # The leader's view is keyed 10 minutes ahead of this node's clock: a
      # poll this node starts after applying it is newer all the same.
      later = System.system_time(:millisecond) + 600_000
      {_, x} = ctx.x
      {_, y} = ctx.y
      events = fn -> TestCluster.call(ctx.node, SpyMembership, :events, [ctx.spy]) end

      FakeAPI.clear_faults(ctx.api)
      FakeAPI.add_droplet(ctx.api, FakeAPI.droplet(id: 2, name: "y", private_ip: y))

      # The made-up leader is unreachable: this node takes over at once and lists.
      ctx.send_share.(
        encode(ctx.share.(listed_at: later, interval: 100, droplets: [ctx.self_droplet, ctx.x]))
      )

      TestCluster.await(fn -> managed(ctx) == ["y@#{y}"] end, 20_000)
      # The leader's view was applied first.
      assert {:connect, :"x@#{x}"} in events.()
      assert match?({:listing, _}, ctx.get.().view.source)
    end

    test "a share this version cannot read is logged once and ignored; membership never shrinks",
         ctx do
      later = System.system_time(:millisecond) + 600_000
      {_, x} = ctx.x

      ctx.send_share.(encode(ctx.share.(listed_at: later, droplets: [ctx.self_droplet, ctx.x])))

      TestCluster.await(fn -> managed(ctx) == ["x@#{x}"] end)

      unreadable = [
        # The unversioned form of earlier releases.
        {:libcluster_droplet_share, :t, :"0-leader@127.0.0.1", 1, []},
        # A newer protocol.
        {:libcluster_droplet_share, 4, :t, %{from: :"0-leader@127.0.0.1", droplets: []}},
        # Version 2, but not its shape.
        {:libcluster_droplet_share, 2, :t, %{from: :"0-leader@127.0.0.1", droplets: [:x]}}
      ]

      for _ <- 1..2, message <- unreadable, do: ctx.send_share.(message)
      # A share of another topology, otherwise valid and newer, is ignored too.
      ctx.send_share.(
        encode(ctx.share.(topology: :other, listed_at: later + 5, droplets: [ctx.self_droplet]))
      )

      # Ordered after all of the above: once it is in, they were all handled.
      ctx.send_share.(
        encode(ctx.share.(listed_at: later + 1, droplets: [ctx.self_droplet, ctx.x]))
      )

      TestCluster.await(fn -> ctx.get.().view[:key] == {later + 1, 1} end)

      assert managed(ctx) == ["x@#{x}"]

      refute Enum.any?(
               TestCluster.call(ctx.node, SpyMembership, :events, [ctx.spy]),
               &match?({:disconnect, _}, &1)
             )

      warnings =
        Enum.filter(TestCluster.call(ctx.node, Remote, :warnings, []), &(&1 =~ "cannot read"))

      assert length(warnings) == 3, inspect(warnings)
      assert Enum.any?(warnings, &(&1 =~ "protocol version 1, this node speaks 3 and 2"))
      assert Enum.any?(warnings, &(&1 =~ "protocol version 4"))
      assert Enum.any?(warnings, &(&1 =~ "(malformed)"))
    end
  end
end
