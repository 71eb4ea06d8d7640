defmodule LibclusterDroplet.TakeoverInFlightTest do
  @moduledoc false
  # A leader that goes away while a follower's own API poll is in flight:
  # the follower takes over at once (the DOWN is not ignored), and shares
  # what that poll found as soon as it ends, not a stale period later.
  use ExUnit.Case, async: true

  alias Cluster.Strategy.Droplet.Poll
  alias LibclusterDroplet.{Coordination, FakeAPI, TestCluster}
  alias LibclusterDroplet.TestCluster.{Remote, RemoteProbe}

  @moduletag timeout: 120_000

  @token "dop_v1_takeover_in_flight_7e8f"
  # Long: a leader is judged silent only 2 × 5 s + 1 s after its last
  # share, well after the follower's poll (3 s) ends.
  @interval 5_000
  @slow 3_000
  # Larger than any monotonic time.
  @never 1_000_000_000_000_000

  defp state(%{node: node, pid: pid}), do: TestCluster.call(node, :sys, :get_state, [pid])

  defp start_cluster(api, n, extra \\ [], health_port \\ nil) do
    prefix = "ti#{System.unique_integer([:positive])}"

    nodes =
      for i <- 1..n do
        [address] = TestCluster.allocate_addresses(1)
        name = "#{prefix}-#{i}"
        FakeAPI.add_droplet(api, FakeAPI.droplet(id: i, name: name, private_ip: address))
        if health_port, do: TestCluster.open_port(address, health_port)
        node = TestCluster.start_node(name, address)
        on_exit(fn -> TestCluster.stop(node) end)
        node
      end

    config =
      [
        token: @token,
        api_url: FakeAPI.url(api),
        polling_interval: @interval,
        max_requests_per_minute: 60_000,
        api_timeout: 10_000
      ] ++ extra

    members =
      for node <- nodes do
        sup = TestCluster.start_strategy(node, :droplets, config)
        %{node: node, sup: sup, pid: TestCluster.call(node, Remote, :strategy_pid, [sup])}
      end

    TestCluster.await(fn -> TestCluster.full_mesh?(nodes) end, 20_000)
    [leader | followers] = members

    for f <- followers,
        do: TestCluster.await(fn -> state(f).coordination.leader == leader.node.node end, 40_000)

    members
  end

  defp last_api_poll_at(%{node: node, pid: pid}, at),
    do:
      TestCluster.call(node, RemoteProbe, :put_state, [
        pid,
        [:coordination, :last_api_poll_at],
        at
      ])

  # Makes a follower poll now, traced: once no poll of its own is in flight
  # (its safety poll, due every 4 × (size − 1) intervals, may be), its
  # safety poll is made due and its tick delivered (with the ref it waits
  # for). Returns its count of polls before this one.
  defp poll_now(%{node: node, pid: pid} = member) do
    last_api_poll_at(member, @never)
    TestCluster.await(fn -> not match?(%{phase: %Poll{}}, state(member)) end, 20_000)
    polls = state(member).schedule.polls
    TestCluster.call(node, RemoteProbe, :trace_listings_and_shares, [pid])

    TestCluster.await(fn ->
      last_api_poll_at(member, -@never)
      {ref, _timer} = state(member).timers.tick
      TestCluster.call(node, :erlang, :send, [pid, {:droplet_timer, :tick, ref}])
      match?(%{phase: %Poll{}}, state(member))
    end)

    polls
  end

  test "a leader DOWN while this node's own poll is in flight: it takes over, and shares when the poll ends" do
    {:ok, api} = FakeAPI.start_link(token: @token)
    [leader, successor, other] = start_cluster(api, 3)
    assert Coordination.stale_after(@interval) > 2 * @slow

    # Every listing now takes 3 s.
    FakeAPI.inject(api, {:slow, @slow}, times: :infinity)
    polls = poll_now(successor)

    # The leader's strategy stops while the successor's listing is in flight.
    TestCluster.call(leader.node, Supervisor, :stop, [leader.sup])

    # When that poll has ended, the successor leads: the leader's node stays
    # connected, but was passed over.
    TestCluster.await(fn -> state(successor).schedule.polls > polls end)
    s = state(successor)
    assert s.schedule.polls == polls + 1
    assert s.coordination.leader == nil

    # It shared that poll's view when it ended, before any other listing.
    assert [:list, :share | _] =
             TestCluster.call(successor.node, RemoteProbe, :listings_and_shares, [successor.pid])

    # The third node follows it.
    TestCluster.await(fn -> state(other).coordination.leader == successor.node.node end)
  end

  test "a leader DOWN while this node's own poll probes: it takes over, and shares when the probes end" do
    {:ok, api} = FakeAPI.start_link(token: @token)
    port = TestCluster.free_port()
    # A listed droplet whose health port drops SYNs: each check takes 2 s.
    [hole] = TestCluster.allocate_addresses(1)
    sockets = TestCluster.black_hole(hole, port)
    on_exit(fn -> Enum.each(sockets, &:gen_tcp.close/1) end)
    FakeAPI.add_droplet(api, FakeAPI.droplet(id: 99, name: "hole", private_ip: hole))
    check = [health_check: {:tcp, port: port, timeout: 2_000}]
    [leader, successor] = start_cluster(api, 2, check, port)
    assert Coordination.stale_after(@interval) > 2 * 2_000

    polls = poll_now(successor)
    TestCluster.await(fn -> match?(%{phase: %Poll{stage: :probing}}, state(successor)) end)
    TestCluster.call(leader.node, Supervisor, :stop, [leader.sup])

    TestCluster.await(fn -> state(successor).schedule.polls > polls end)
    s = state(successor)
    assert s.schedule.polls == polls + 1
    assert s.coordination.leader == nil
    # Listed while following, so not shared then: shared once probed.
    assert [:list, :share | _] =
             TestCluster.call(successor.node, RemoteProbe, :listings_and_shares, [successor.pid])
  end
end
