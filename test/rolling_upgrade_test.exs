defmodule LibclusterDroplet.RollingUpgradeTest do
  @moduledoc false
  # A rolling upgrade from libcluster_droplet 2.0.0 to this tree, on real
  # nodes. 2.0.0 is commit b5c467a: its strategy shares in protocol version
  # 2 (`droplets: [{name, address}]`) and reads nothing else; this tree
  # shares in version 3 (verdicts and floor) and, with each view, in
  # version 2 too, and reads both (LibclusterDroplet.Share). The README's
  # configuration hashes to the same fingerprint in both, so a follower of
  # either release follows a leader of the other.
  #
  # Two consumer applications (LibclusterDroplet.ConsumerApp), one against
  # each release, with the same config/runtime.exs (the README's block), the
  # real libcluster 3.5.0 and OTP's defaults; every node is its own OS
  # process and records every nodedown from its boot. With nodes named so
  # that the lowest-named one (the poller) is 2.0.0's first and this tree's
  # after it:
  #
  #   A. old leader: old1 < new2 < old3 < new4 mesh; the two new nodes
  #      follow the old poller (they read its version 2 shares);
  #   B. the old leader is stopped and its droplet destroyed: new2 takes
  #      over and old3 follows it (it reads its version 2 shares);
  #   C. a 2.0.0 droplet is added (old5): it joins and follows new2;
  #   D. old3's droplet is removed: old3 alone leaves.
  #
  # In each phase every follower names the poller as its leader and its
  # last view came from the poller's share; then, while the poller polls 20
  # more times, the mesh holds at every sample and each follower polls the
  # API no more than its safety polls allow, counted on its own state and
  # bounded by the time the window took. A follower that cannot read the
  # poller's shares keeps the membership: it polls at full rate instead,
  # which the count shows (and after a takeover its state still names the
  # successor it awaited, so the leader alone would not). No node sees a
  # nodedown other than of the stopped poller or of the removed node.
  #
  # 2.0.0 is taken from the repository's history. A clone without that
  # commit (a shallow one) fails this test and says so; set
  # LIBCLUSTER_DROPLET_SKIP_ROLLING_UPGRADE=1 to skip it there instead.
  use ExUnit.Case, async: false

  alias LibclusterDroplet.{ConsumerApp, FakeAPI, PreviousRelease, TestCluster}

  @root Path.expand("..", __DIR__)
  @vendor ConsumerApp.vendor_dir(@root)
  # libcluster_droplet 2.0.0.
  @previous "b5c467a"
  @skip_env "LIBCLUSTER_DROPLET_SKIP_ROLLING_UPGRADE"
  @token "dop_v1_rolling_upgrade_test_token"
  @interval 300
  # The poller's polls per observation window.
  @hold_polls 20
  # A follower polls the API itself once its last poll is 4 × (cluster
  # size − 1) × polling_interval old (guides/how-it-works.md, the same rule
  # in 2.0.0); the size counts at least 2, so its polls are at least this
  # far apart.
  @min_safety_interval 4 * @interval

  # The consumer application's Cluster.Supervisor (its own module, not ours).
  @cluster_supervisor Module.concat(["ConsumerApp", "ClusterSupervisor"])

  @moduletag :consumer_app
  @moduletag :rolling_upgrade
  @moduletag timeout: 900_000

  @previous_present? PreviousRelease.commit_present?(@root, @previous)

  skip_requested? = System.get_env(@skip_env) in ["1", "true"]

  skip_reason =
    cond do
      not File.dir?(@vendor) ->
        "#{@vendor} is absent: the vendored Hex packages are needed to build " <>
          "the consumer applications"

      not @previous_present? and skip_requested? ->
        "commit #{@previous} (libcluster_droplet 2.0.0) is not in the repository " <>
          "and #{@skip_env} is set"

      true ->
        nil
    end

  @skip_reason skip_reason

  if @skip_reason do
    IO.puts(:stderr, "#{inspect(__MODULE__)} skipped: #{@skip_reason}")
    @moduletag skip: @skip_reason
  end

  cond do
    @skip_reason ->
      :ok

    not @previous_present? ->
      setup_all do
        raise "commit #{@previous} (libcluster_droplet 2.0.0, the release this test runs " <>
                "beside this tree) is not in the repository at #{@root}: fetch the whole " <>
                "history (git fetch --unshallow), or set #{@skip_env}=1 to skip this test"
      end

    true ->
      setup_all do
        new = ConsumerApp.build!(root: @root, vendor: @vendor, polling_interval: @interval)
        on_exit(fn -> ConsumerApp.cleanup(new) end)
        old = PreviousRelease.consumer!(new, @root, @previous)
        on_exit(fn -> ConsumerApp.cleanup(old) end)
        note("consumer apps compiled: new in #{new.compile_ms} ms, 2.0.0 in #{old.compile_ms} ms")
        %{new: new, old: old}
      end
  end

  setup do
    # Polls are 16 times as frequent as the README's 5 s, so is the budget:
    # at DigitalOcean's 250 a minute, a follower that polls at full rate
    # beside the poller would be throttled by 429s and look like one that
    # follows.
    api =
      start_supervised!(
        {FakeAPI, token: @token, rate_limit: [per_minute: 250 * 16, per_hour: 5_000 * 16]}
      )

    %{api: api, url: FakeAPI.url(api)}
  end

  test "2.0.0 and this release in one cluster: each follows a poller of the other, takeover, " <>
         "join and removal, and no node is disconnected",
       ctx do
    # Lowest name first: the poller is the first node of each phase.
    [a1, a2, a3, a4, a5] =
      5 |> TestCluster.allocate_addresses() |> Enum.sort_by(&node_name(ctx.new, &1))

    started = now()

    # ---- A: the poller runs 2.0.0; new nodes follow it.
    [old1, new2, old3, new4] =
      start_nodes(ctx, [{ctx.old, a1}, {ctx.new, a2}, {ctx.old, a3}, {ctx.new, a4}])

    all = [old1.node, new2.node, old3.node, new4.node]
    await_mesh(all, "the four nodes of 2.0.0 and this release did not form a mesh")
    note("A: mesh of 4 after #{now() - started} ms")

    for node <- [old1, old3], do: assert(share_version(node) == 2)
    for node <- [new2, new4], do: assert(share_version(node) == 3)

    problems = phase(ctx, "A (2.0.0 polls)", old1, [new2, old3, new4])
    assert problems == [], Enum.join(problems, ";\n")

    # ---- B: the 2.0.0 poller goes away; this release's node takes over.
    stopped_at = System.os_time(:millisecond)
    TestCluster.stop(old1.node)
    :ok = FakeAPI.remove_droplet(ctx.api, old1.id)
    rest = [new2, old3, new4]
    await_mesh(Enum.map(rest, & &1.node), "after the poller stopped, the mesh broke")

    problems = phase(ctx, "B (this release polls, after a takeover)", new2, [old3, new4])
    assert problems == [], Enum.join(problems, ";\n")

    # ---- C: a 2.0.0 droplet is added; it joins and follows this release.
    [old5] = start_nodes(ctx, [{ctx.old, a5}])
    await_mesh([new2.node, old3.node, new4.node, old5.node], "the added 2.0.0 node did not join")

    problems = phase(ctx, "C (a 2.0.0 node joined)", new2, [old3, new4, old5])
    assert problems == [], Enum.join(problems, ";\n")

    # ---- D: a 2.0.0 droplet is removed; its node alone leaves.
    healthy = [new2, new4, old5]
    removed_at = System.os_time(:millisecond)
    :ok = FakeAPI.remove_droplet(ctx.api, old3.id)

    case await_result(fn -> detached?(old3, healthy) end, 30_000) do
      {:ok, _} -> :ok
      {:timeout, _} -> flunk("#{old3.node.node} did not leave: #{connections([old3 | healthy])}")
    end

    # Still detached a few polls later, and nothing else moved.
    polls = strategy(new2.node).polls
    TestCluster.await(fn -> strategy(new2.node).polls >= polls + 6 end, 60_000)

    assert detached?(old3, healthy),
           "#{old3.node.node} was connected again: #{connections(healthy ++ [old3])}"

    assert_exact_mesh(healthy)

    assert [{_, pid, :worker, _}] =
             TestCluster.call(old3.node, Supervisor, :which_children, [
               @cluster_supervisor
             ])

    assert is_pid(pid), "the removed node's strategy is no longer running"

    # The whole run: every nodedown any node saw is of the stopped poller
    # (after it stopped) or of the removed node, or seen by it (after its
    # droplet was removed).
    assert_no_nodedowns([new2, old3, new4, old5], fn observer, down, at ->
      (down == old1.node.node and at >= stopped_at) or
        ((down == old3.node.node or observer == old3.node.node) and at >= removed_at)
    end)

    note("whole run: #{now() - started} ms")
  end

  # ------------------------------------------------------------------ phases

  # Once `followers` all follow `leader` (30 s at most), while the leader
  # polls @hold_polls more times: the mesh of all of them at every sample,
  # and each follower's own API polls within what its safety interval allows
  # over the window. Returns the problems found (empty when none).
  defp phase(ctx, name, leader, followers) do
    nodes = [leader | followers]
    expected = leader.node.node

    settled =
      await_result(
        fn ->
          Enum.all?(followers, &follows?(strategy(&1.node), expected)) and
            strategy(leader.node).leader == nil
        end,
        30_000
      )

    before = Map.new(nodes, &{&1.node.node, strategy(&1.node).polls})
    requests_before = FakeAPI.request_count(ctx.api)
    window_start = now()

    breaks =
      sample_until(
        fn -> strategy(leader.node).polls >= before[expected] + @hold_polls end,
        fn -> if full_mesh?(nodes), do: [], else: [connections(nodes)] end,
        120_000
      )

    window = now() - window_start
    facts = Map.new(nodes, &{&1.node.node, strategy(&1.node)})
    polled = Map.new(facts, fn {node, f} -> {node, f.polls - before[node]} end)
    allowed = div(window, @min_safety_interval) + 1

    note(
      "#{name}: settled #{inspect(settled)}; in #{window} ms the API got " <>
        "#{FakeAPI.request_count(ctx.api) - requests_before} requests; polls per node " <>
        "#{inspect(polled)} (followers may poll #{allowed})"
    )

    names = Enum.map(nodes, & &1.node.node)

    downs =
      for observer <- nodes,
          {down, reason, _at} <- ConsumerApp.nodedowns(observer.node),
          down in names,
          do: {observer.node.node, down, reason}

    overpolled =
      for f <- followers, polled[f.node.node] > allowed do
        "#{name}: #{f.node.node} (share version #{f.version}) polled the API " <>
          "#{polled[f.node.node]} times in #{window} ms while following #{expected}, which " <>
          "polled #{polled[expected]} times; its safety polls allow at most #{allowed}"
      end

    Enum.filter(
      [
        !match?({:ok, _}, settled) &&
          "#{name}: the followers did not all follow #{expected} (and apply its shares) " <>
            "within 30 s; leader and last view's source per node: " <>
            inspect(Map.new(facts, fn {node, f} -> {node, {f.leader, f.source}} end)),
        polled[expected] < @hold_polls &&
          "#{name}: the poller #{expected} polled #{polled[expected]} times, not #{@hold_polls}",
        breaks != [] &&
          "#{name}: the mesh broke #{length(breaks)} times; first: #{inspect(hd(breaks))}",
        downs != [] &&
          "#{name}: nodes saw #{length(downs)} nodedowns of one another; the first " <>
            "({observer, down, reason}): #{inspect(Enum.take(downs, 6))}"
      ] ++ overpolled,
      & &1
    )
  end

  # ----------------------------------------------------------------- helpers

  # Lists each droplet and boots its node, all concurrently; the nodes are
  # stopped when the test ends.
  defp start_nodes(ctx, specs) do
    specs =
      Enum.map(specs, fn {app, address} ->
        id = System.unique_integer([:positive])
        :ok = FakeAPI.add_droplet(ctx.api, ConsumerApp.droplet(app, id, address))
        {app, address, id}
      end)

    specs
    |> Task.async_stream(
      fn {app, address, id} ->
        node = ConsumerApp.start_node(app, address, @token, ctx.url, log_level: log_level())
        %{id: id, node: node, version: nil}
      end,
      timeout: 120_000,
      ordered: true
    )
    |> Enum.map(fn {:ok, started} ->
      on_exit(fn -> TestCluster.stop(started.node) end)
      %{started | version: share_version(started.node)}
    end)
  end

  defp node_name(app, address), do: :"#{ConsumerApp.basename(app)}@#{address}"

  # The share protocol a node's release speaks: 2 for 2.0.0, 3 for this tree.
  defp share_version(%TestCluster{} = node),
    do: TestCluster.call(node, LibclusterDroplet.Share, :version, [])

  defp share_version(%{node: node}), do: share_version(node)

  # What a node's strategy state says: whom it follows (`nil`: it polls for
  # the cluster), where the last view it applied came from (`{:share,
  # node}` or its own listing), and how many API polls it made. 2.0.0 keeps
  # them in `last_view.source` and `polls`, this tree in `view.source` and
  # `schedule.polls`.
  defp strategy(node) do
    [{_, pid, _, _}] = TestCluster.call(node, Supervisor, :which_children, [@cluster_supervisor])

    state = TestCluster.call(node, :sys, :get_state, [pid])
    %{leader: state.coordination.leader, source: view_source(state), polls: api_polls(state)}
  end

  defp view_source(%{view: %{source: source}}), do: source
  defp view_source(%{last_view: %{source: source}}), do: source
  defp view_source(_state), do: nil

  defp api_polls(%{schedule: %{polls: polls}}), do: polls
  defp api_polls(%{polls: polls}) when is_integer(polls), do: polls

  # A node follows `leader` once it has applied a share of it: after a
  # takeover, `coordination.leader` names the successor it awaits before
  # any share of it has arrived, or could be read.
  defp follows?(facts, leader), do: facts.leader == leader and facts.source == {:share, leader}

  defp await_mesh(nodes, message) do
    case await_result(fn -> full_mesh?(nodes) end, 30_000) do
      {:ok, _} -> :ok
      {:timeout, _} -> flunk("#{message}: #{connections(nodes)}")
    end
  end

  defp full_mesh?(nodes), do: TestCluster.full_mesh?(Enum.map(nodes, &plain/1))

  defp plain(%TestCluster{} = node), do: node
  defp plain(%{node: %TestCluster{} = node}), do: node

  defp connections(nodes) do
    nodes
    |> Map.new(&{plain(&1).node, TestCluster.connected(plain(&1))})
    |> inspect(pretty: true)
  end

  defp detached?(removed, healthy) do
    names = Enum.map(healthy, &plain(&1).node)

    Enum.all?(TestCluster.connected(plain(removed)), &(&1 not in names)) and
      Enum.all?(healthy, &(plain(removed).node not in TestCluster.connected(plain(&1))))
  end

  defp assert_exact_mesh(nodes) do
    names = nodes |> Enum.map(&plain(&1).node) |> Enum.sort()

    for node <- nodes do
      assert TestCluster.connected(plain(node)) == names -- [plain(node).node],
             "#{plain(node).node} is not connected to exactly the other nodes: " <>
               connections(nodes)
    end
  end

  # Every nodedown the nodes recorded since their boot, except those
  # `expected?.(observer, down, os_ms)` allows.
  defp assert_no_nodedowns(nodes, expected?) do
    downs =
      for observer <- nodes,
          name = plain(observer).node,
          {down, reason, at} <- ConsumerApp.nodedowns(plain(observer)),
          not expected?.(name, down, at),
          do: {name, down, reason}

    assert downs == [],
           "#{length(downs)} unexpected nodedowns; the first ({observer, down, reason}): " <>
             inspect(Enum.take(downs, 6))
  end

  defp sample_until(done, check, timeout),
    do: TestCluster.sample_until(done, check, timeout, 100)

  defp await_result(fun, timeout), do: TestCluster.await_result(fun, timeout, 100)

  defp now, do: System.monotonic_time(:millisecond)

  defp log_level do
    case System.get_env("CONSUMER_APP_LOG") do
      nil -> :error
      level -> String.to_existing_atom(level)
    end
  end

  # Timings, printed with CONSUMER_APP_TIMINGS=1.
  defp note(line) do
    if System.get_env("CONSUMER_APP_TIMINGS"), do: IO.puts("[rolling_upgrade] " <> line)
  end
end
