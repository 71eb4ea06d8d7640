defmodule LibclusterDroplet.MembersEdgeTest do
  @moduledoc false
  # Membership at its edges: removals that survive a restart, connects that
  # hang or lie, once-only warnings that must not pile up, and a node
  # dropped for its health checks whose droplet then goes away.
  use ExUnit.Case, async: true

  import ExUnit.CaptureLog
  alias LibclusterDroplet.{Connector, FakeAPI, Plan, Schedule, SpyMembership, TestCluster}
  alias LibclusterDroplet.TestCluster.{Remote, RemoteProbe}

  @moduletag timeout: 180_000

  @token "dop_v1_members_edge_token_9a8b7c"
  @interval 100

  defp config(api, extra) do
    Keyword.merge(
      [
        token: @token,
        api_url: FakeAPI.url(api),
        polling_interval: @interval,
        max_backoff: 60_000,
        api_timeout: 5_000,
        max_requests_per_minute: 60_000
      ],
      extra
    )
  end

  # A strategy in this (non-distributed) VM with spy membership; `connect`,
  # given the spy, makes its connect MFA.
  defp start_local(api, extra, connect \\ &{SpyMembership, :connect, [&1]}) do
    topology = :"edge_#{System.unique_integer([:positive])}"
    spy = SpyMembership.start()
    mfas = Keyword.put(SpyMembership.mfas(spy), :connect, connect.(spy))

    pid =
      start_supervised!(
        {Cluster.Strategy.Droplet, [topology: topology, config: config(api, extra)] ++ mfas},
        id: topology
      )

    %{pid: pid, spy: spy, topology: topology}
  end

  defp state(pid), do: :sys.get_state(pid)
  defp state(node, pid), do: TestCluster.call(node, :sys, :get_state, [pid])
  defp now, do: System.monotonic_time(:millisecond)

  describe "connects" do
    test "a connect that hangs is given up at its deadline as a timeout, with backoff; 64 hung ones stop nothing after it" do
      hung =
        for i <- 1..Connector.max_in_flight(), do: {i, "a-#{String.pad_leading("#{i}", 2, "0")}"}

      fine = for i <- 1..3, do: {100 + i, "b-#{i}"}

      droplets =
        for {id, name} <- hung ++ fine,
            do: FakeAPI.droplet(id: id, name: name, private_ip: "127.0.9.#{id}")

      {:ok, api} = FakeAPI.start_link(token: @token, droplets: droplets)
      ctx = start_local(api, [], &{__MODULE__, :hang_on_a, [&1]})
      fine_nodes = for {id, name} <- fine, do: :"#{name}@127.0.9.#{id}"

      # The a- nodes sort first: their 64 connects hang and fill every slot.
      TestCluster.await(fn ->
        map_size(state(ctx.pid).members.connector.in_flight) == Connector.max_in_flight()
      end)

      polls = state(ctx.pid).schedule.polls
      TestCluster.await(fn -> state(ctx.pid).schedule.polls >= polls + 3 end)
      %{members: members, timers: timers} = state(ctx.pid)
      in_flight = Map.values(members.connector.in_flight)
      assert Enum.all?(in_flight, &String.starts_with?(Atom.to_string(&1.node), "a-"))
      assert SpyMembership.connected(ctx.spy) == []
      # A timer stands for the earliest deadline, 30 s after each start.
      assert {ref, timer} = timers.connects
      left = Process.read_timer(timer)
      assert is_integer(left) and left <= 30_000

      # Their deadline passes (the wait itself shortened, nothing else).
      past = now() - 1

      :sys.replace_state(ctx.pid, fn s ->
        update_in(s.members.connector.in_flight, fn flights ->
          Map.new(flights, fn {r, c} -> {r, %{c | deadline: past}} end)
        end)
      end)

      send(ctx.pid, {:droplet_timer, :connects, ref})

      # The fresh nodes connect; the hung tasks are gone.
      TestCluster.await(fn -> SpyMembership.connected(ctx.spy) == fine_nodes end)
      TestCluster.await(fn -> Enum.all?(in_flight, &(not Process.alive?(&1.pid))) end)

      failures = state(ctx.pid).members.connector.failures
      assert map_size(failures) == Connector.max_in_flight()

      for %{node: node} <- in_flight do
        assert %{reason: :timeout, count: count, retry_at: retry_at} = failures[node]
        assert count >= 1
        # Retried on its backoff, not at once.
        assert retry_at - past >= Schedule.backoff(@interval, 1, 60_000, 0.0)
      end
    end

    test "a connect that says true for a node left unconnected is a failure, retried on its backoff" do
      droplet = FakeAPI.droplet(id: 1, name: "liar", private_ip: "127.0.9.201")
      {:ok, api} = FakeAPI.start_link(token: @token, droplets: [droplet])
      {:ok, attempts} = Agent.start(fn -> [] end)
      ctx = start_local(api, [], fn _spy -> {__MODULE__, :say_true, [attempts]} end)
      node = :"liar@127.0.9.201"

      capture_log(fn ->
        TestCluster.await(fn -> length(Agent.get(attempts, & &1)) >= 4 end, 30_000)
      end)

      assert %{reason: :not_connected, count: count} =
               state(ctx.pid).members.connector.failures[node]

      assert count >= 3
      times = attempts |> Agent.get(& &1) |> Enum.reverse()
      # Not one per poll: after its n-th failure it waits at least the lower
      # bound of Schedule.backoff/3 (a busy machine only makes gaps longer).

      for {[before, next], n} <- times |> Enum.chunk_every(2, 1, :discard) |> Enum.with_index(1) do
        floor = Schedule.backoff(@interval, n, 60_000, 0.0)

        assert next - before >= floor,
               "retry #{n} after #{next - before} ms, backoff floor #{floor} ms"
      end

      assert SpyMembership.connected(ctx.spy) == []
    end
  end

  @doc false
  # A connect MFA: hangs for the a- nodes, connects the others through the spy.
  def hang_on_a(spy, node) do
    if String.starts_with?(Atom.to_string(node), "a-"),
      do: Process.sleep(:infinity),
      else: SpyMembership.connect(spy, node)
  end

  @doc false
  # A connect MFA that says it connected and did not.
  def say_true(attempts, _node) do
    Agent.update(attempts, &[now() | &1])
    true
  end

  test "once-only warnings stay bounded by the current view while unusable names change" do
    {:ok, api} = FakeAPI.start_link(token: @token)
    unusable = 30

    generation = fn gen ->
      [FakeAPI.droplet(id: 1, name: "ok-1", private_ip: "127.0.9.210")] ++
        for i <- 1..unusable,
            do:
              FakeAPI.droplet(
                id: 1 + i,
                name: "bad.#{gen}.#{i}",
                private_ip: "127.0.9.#{210 + i}"
              )
    end

    FakeAPI.put_droplets(api, generation.(0))
    ctx = start_local(api, [])
    TestCluster.await(fn -> state(ctx.pid).schedule.polls >= 1 end)

    log =
      capture_log(fn ->
        for gen <- 1..6 do
          FakeAPI.put_droplets(api, generation.(gen))

          TestCluster.await(fn ->
            s = state(ctx.pid)
            s.view != nil and Enum.any?(s.view.verdicts, &(&1.name == "bad.#{gen}.1"))
          end)

          assert MapSet.size(state(ctx.pid).warned) <= unusable
        end
      end)

    warned = state(ctx.pid).warned
    assert MapSet.size(warned) == unusable
    assert Enum.all?(warned, &match?({:name, "bad.6." <> _}, &1))
    # Each name warned about once, while listed.
    lines =
      log
      |> String.split("\n")
      |> Enum.filter(&(&1 =~ "[libcluster:#{ctx.topology}] skipping droplet"))

    assert length(lines) == 6 * unusable
  end

  describe "with real nodes" do
    defp start_nodes(api, names, opts \\ []) do
      prefix = "me#{System.unique_integer([:positive])}"

      for {name, i} <- Enum.with_index(names, 1) do
        [address] = TestCluster.allocate_addresses(1)
        name = "#{prefix}-#{name}"
        tags = Keyword.get(opts, :tags, ["web"])

        FakeAPI.add_droplet(
          api,
          FakeAPI.droplet(id: i, name: name, private_ip: address, tags: tags)
        )

        node = TestCluster.start_node(name, address)
        on_exit(fn -> TestCluster.stop(node) end)
        {i, node}
      end
    end

    test "a strategy killed while a node it asked to leave stays connected resumes asking after its restart" do
      {:ok, api} = FakeAPI.start_link(token: @token)
      [{_, a}, {b_id, b}] = start_nodes(api, ["a", "b"])
      # As in a release: the application owns the table the strategy's
      # membership outlives it in.
      {:ok, _} = TestCluster.call(a, Application, :ensure_all_started, [:libcluster_droplet])
      # Its log recorded, out of the test's output (the kill below is logged).
      TestCluster.call(a, Remote, :capture_warnings, [])
      sup = TestCluster.start_strategy(a, :droplets, config(api, polling_interval: 200))
      pid = TestCluster.call(a, Remote, :strategy_pid, [sup])
      TestCluster.await(fn -> b.node in TestCluster.connected(a) end)

      # b does not leave when asked: its rex counts the requests, carries none out.
      :ok = TestCluster.call(b, RemoteProbe, :stub_rex, [])
      requests = fn -> TestCluster.call(b, RemoteProbe, :rex_requests, []) end
      FakeAPI.remove_droplet(api, b_id)
      TestCluster.await(fn -> requests.() >= 1 end)
      assert b.node in TestCluster.connected(a)

      before = requests.()
      assert %{asked: asked} = state(a, pid).members.removing[b.node]
      TestCluster.call(a, Process, :exit, [pid, :kill])

      successor =
        TestCluster.await(fn ->
          p = TestCluster.call(a, Remote, :strategy_pid, [sup])
          p not in [nil, pid] and p
        end)

      # Its successor picks the removal up where it was...
      assert %{asked: resumed} = state(a, successor).members.removing[b.node]
      assert resumed >= asked
      # ...asks again, and b, answering now, leaves by itself.
      TestCluster.call(b, RemoteProbe, :obey_rex, [])
      TestCluster.await(fn -> requests.() > before end, 30_000)
      TestCluster.await(fn -> b.node not in TestCluster.connected(a) end, 30_000)
      TestCluster.await(fn -> state(a, successor).members.removing == %{} end, 30_000)
    end

    test "a node dropped for failing its checks, whose droplet then loses the tag, is asked to leave; no healthy nodedown" do
      {:ok, api} = FakeAPI.start_link(token: @token)
      port = TestCluster.free_port()
      [{_, a}, {b_id, b}, {_, c}] = nodes = start_nodes(api, ["a", "b", "c"])

      listeners =
        Map.new(nodes, fn {_, n} -> {n.node, TestCluster.open_port(n.address, port)} end)

      extra = [
        tag_name: "web",
        polling_interval: 200,
        health_check: {:tcp, port: port, timeout: 300}
      ]

      # b's droplet runs no strategy: only a and c can remove it.
      sups =
        for n <- [a, c],
            into: %{},
            do: {n.node, TestCluster.start_strategy(n, :droplets, config(api, extra))}

      for n <- [a, c], do: TestCluster.call(n, Remote, :start_nodedown_recorder, [])
      TestCluster.await(fn -> TestCluster.full_mesh?([a, b, c]) end, 20_000)
      pid = TestCluster.call(a, Remote, :strategy_pid, [sups[a.node]])
      TestCluster.await(fn -> b.node in state(a, pid).members.managed end)

      # b's health port closes: after 3 failed checks a no longer manages
      # it, and never disconnects it for that.
      :gen_tcp.close(listeners[b.node])

      TestCluster.await(fn ->
        s = state(a, pid)
        b.node not in s.members.managed and b.node in s.members.selected
      end)

      assert Plan.probe_strikes() == 3
      assert b.node in TestCluster.connected(a)

      # Its droplet loses the tag: it is asked to leave, and leaves alone.
      FakeAPI.update_droplet(api, b_id, %{tags: []})
      TestCluster.await(fn -> TestCluster.connected(b) == [] end, 30_000)
      TestCluster.await(fn -> state(a, pid).members.removing == %{} end, 30_000)

      assert TestCluster.connected(a) == [c.node]
      assert TestCluster.connected(c) == [a.node]
      # Only b went down, on either node: a and c never lost each other.
      assert Enum.uniq(TestCluster.call(a, Remote, :nodedowns, [])) == [b.node]
      assert Enum.uniq(TestCluster.call(c, Remote, :nodedowns, [])) == [b.node]
    end
  end
end
