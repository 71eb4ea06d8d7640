defmodule Cluster.Strategy.DropletExplainClusterTest do
  @moduledoc false
  # Cluster.Strategy.Droplet.explain/2 on real nodes, each its own OS
  # process on its own loopback address, against the fake API: every stage
  # where a node can stop, diagnosed over the network, and the log lines a
  # failing node produces at the default level.
  #
  # The explaining node asks epmd at ERL_EPMD_PORT: an epmd of the test's
  # own (start_epmd/1), or a port where nothing listens, never the
  # machine's 4369, where other people's nodes are registered.
  use ExUnit.Case, async: true

  alias Cluster.Strategy.Droplet
  alias LibclusterDroplet.{FakeAPI, TestCluster}
  alias LibclusterDroplet.TestCluster.Remote

  @moduletag :cluster
  @moduletag timeout: 180_000

  @token "dop_v1_explain_cluster_test_token"
  @interval 200

  setup do
    {:ok, api} = FakeAPI.start_link(token: @token)
    {:ok, api: api, prefix: "x#{System.unique_integer([:positive])}"}
  end

  defp add_droplet(api, name, address) do
    id = :erlang.phash2({name, address}, 1_000_000_000) + 1
    FakeAPI.add_droplet(api, FakeAPI.droplet(id: id, name: name, private_ip: address))
  end

  defp config(api, extra \\ []) do
    Keyword.merge(
      [
        token: @token,
        api_url: FakeAPI.url(api),
        polling_interval: @interval,
        max_requests_per_minute: 60_000
      ],
      extra
    )
  end

  # The node that explains, `app@<fresh address>`, with ERL_EPMD_PORT set
  # to `epmd_port`; its info and warning lines are captured.
  defp explainer(epmd_port, opts \\ []) do
    [address] = TestCluster.allocate_addresses(1)

    node =
      TestCluster.start_node(
        Keyword.get(opts, :name, "app"),
        address,
        [env: [{"ERL_EPMD_PORT", "#{epmd_port}"}], log_level: :info] ++
          Keyword.take(opts, [:args])
      )

    on_exit(fn -> TestCluster.stop(node) end)
    TestCluster.call(node, Remote, :capture_warnings, [:info])
    node
  end

  defp start_node(name, address, opts \\ []) do
    node = TestCluster.start_node(name, address, opts)
    on_exit(fn -> TestCluster.stop(node) end)
    node
  end

  # Generous: each step of the diagnosis is a loopback connection, which
  # a busy machine must not turn into a timeout.
  defp explain(node, opts \\ []) do
    args = [:droplets, Keyword.merge([print: false, probe_timeout: 5_000], opts)]
    {:ok, report} = TestCluster.call(node, Droplet, :explain, args, 60_000)
    report
  end

  defp entry(report, name), do: Enum.find(report.entries, &(&1.verdict.name == name))

  # Explains again and again until the droplet `name` is at `stage`.
  defp await_stage(node, name, stage, opts \\ []) do
    TestCluster.await(
      fn ->
        report = explain(node, opts)
        e = entry(report, name)
        e != nil and e.stage == stage and {report, e}
      end,
      60_000,
      100
    )
  end

  defp check(report, pattern),
    do: Enum.find(report.checks, fn {_level, text} -> text =~ pattern end)

  defp lines(node, pattern),
    do: node |> TestCluster.call(Remote, :warnings, []) |> Enum.filter(&(&1 =~ pattern))

  test "a node running under another name: epmd at its address lists the name that runs there",
       %{api: api, prefix: prefix} do
    [web_address] = TestCluster.allocate_addresses(1)
    # The epmd stands for the web droplet's own. It starts after the
    # explaining node booted, so that node (which needs no epmd) is not
    # registered with it: on droplets, each host has its own epmd.
    epmd = TestCluster.free_port()
    app = explainer(epmd)
    TestCluster.start_epmd([web_address], epmd)
    on_exit(fn -> TestCluster.stop_epmd(epmd) end)

    # The release on that droplet was started as web@, while the strategy
    # computes app@ (node_basename: "app"): it registers with epmd, on a
    # distribution port of its own.
    web = start_node("web", web_address, epmd: true, env: [{"ERL_EPMD_PORT", "#{epmd}"}])

    assert {:ok, [{~c"web", web_port}]} = TestCluster.call(web, :erl_epmd, :names, [])
    add_droplet(api, "#{prefix}-app", app.address)
    add_droplet(api, "#{prefix}-web", web_address)
    TestCluster.start_strategy(app, :droplets, config(api, node_basename: "app"))

    {report, e} = await_stage(app, "#{prefix}-web", :connect_failed)

    assert e.verdict.node == :"app@#{web_address}"
    assert e.connect.count >= 1
    assert e.finding == {:not_registered, [{"web", web_port}]}

    text = Droplet.format_explanation(report)
    assert text =~ "runs `web@#{web_address}`"
    assert text =~ ~s(the strategy expects `app@#{web_address}`: set node_basename: "web")
    assert {:ok, _} = check(report, "this node is among the selected droplets")
    assert {:ok, _} = check(report, "distribution is started with long names")
    assert entry(report, "#{prefix}-app").stage == :this_node
    assert TestCluster.connected(web) == []
  end

  test "a node with another cookie: it answers under the expected name, and the handshake fails",
       %{api: api, prefix: prefix} do
    closed_epmd = TestCluster.free_port()
    app = explainer(closed_epmd)
    [other_address] = TestCluster.allocate_addresses(1)

    other = start_node("app", other_address, cookie: "another-cookie", log_level: :warning)

    TestCluster.call(other, Remote, :capture_warnings, [])
    add_droplet(api, "#{prefix}-a", app.address)
    add_droplet(api, "#{prefix}-b", other_address)
    TestCluster.start_strategy(app, :droplets, config(api, node_basename: "app"))

    {report, e} = await_stage(app, "#{prefix}-b", :connect_failed)

    assert e.finding == {:cookie_mismatch, TestCluster.dist_port()}

    assert Droplet.format_explanation(report) =~
             "`app@#{other_address}` answers at #{other_address}:#{TestCluster.dist_port()} " <>
               "but the handshake fails: most likely a cookie mismatch"

    assert TestCluster.connected(other) == []
    # The diagnosis stopped its handshake before any cookie: the node has
    # nothing to say about it (only about the strategy's own connects).
    assert lines(other, "libcluster_droplet_explain") == []
  end

  test "a closed health port: the stage, the reason and the time; one warning in many polls, one info line when it opens, then the same for connects",
       %{api: api, prefix: prefix} do
    closed_epmd = TestCluster.free_port()
    app = explainer(closed_epmd)
    [h_address] = TestCluster.allocate_addresses(1)
    port = TestCluster.free_port()
    add_droplet(api, "#{prefix}-a", app.address)
    add_droplet(api, "#{prefix}-h", h_address)

    TestCluster.start_strategy(
      app,
      :droplets,
      # A closed port is refused at once; the timeout only spares the open
      # one on a busy machine. Connects are retried at most 1 s apart.
      config(api,
        node_basename: "app",
        health_check: {:tcp, port: port, timeout: 2_000},
        max_backoff: 1_000
      )
    )

    {report, e} = await_stage(app, "#{prefix}-h", :health_failed)
    assert %{result: {:error, :refused}, exact?: false, failed: failed} = e.probe
    assert failed >= 1 and is_number(e.probe.took_ms)

    assert Droplet.format_explanation(report) =~
             ~r/port #{port}: connection refused \(in at most [0-9.]+ ms\), \d+ in a row/

    # Many polls later, one warning.
    polls = report.facts.polls
    TestCluster.await(fn -> explain(app).facts.polls >= polls + 12 end, 60_000)

    # Any health line about this port, whatever count it says.
    health = "has failed its health check on port #{port}"
    assert [warning] = lines(app, health)
    assert warning =~ "for 3 polls in a row: connection refused"
    assert warning =~ inspect(:"app@#{h_address}")
    assert warning =~ "Cluster.Strategy.Droplet.explain(:droplets)"

    # The port opens: one info line. Nothing answers at the address, so
    # the connects fail: one warning, in many attempts.
    TestCluster.open_port(h_address, port)
    {_report, e} = await_stage(app, "#{prefix}-h", :connect_failed)

    assert e.finding ==
             {:nothing_answers, {closed_epmd, :refused}, {TestCluster.dist_port(), :refused}}

    TestCluster.await(
      fn -> match?(%{connect: %{count: n}} when n >= 6, entry(explain(app), "#{prefix}-h")) end,
      60_000
    )

    assert [_] = lines(app, "passes its health check on port #{port}")
    assert [warning] = lines(app, ~r/connecting to .* has failed/)
    assert warning =~ "connecting to #{inspect(:"app@#{h_address}")} has failed 3 times in a row"
    assert lines(app, health) |> length() == 1

    # The release starts: connected, since when, and one info line.
    h = start_node("app", h_address)
    {report, e} = await_stage(app, "#{prefix}-h", :connected)
    assert is_integer(e.since) and e.since <= report.facts.now
    # First seen connected: the same time from one explanation to the next.
    assert entry(explain(app), "#{prefix}-h").since == e.since
    assert Droplet.format_explanation(report) =~ ~r/connected\s+since \d{4}-\d\d-\d\dT/

    # Logged when the connect's answer reaches the strategy, which can
    # trail the connection itself.
    recovered = "connected to #{inspect(:"app@#{h_address}")} after"
    TestCluster.await(fn -> lines(app, recovered) != [] end)
    assert [info] = lines(app, recovered)
    assert info =~ ~r/connected to :"app@#{Regex.escape(h_address)}" after \d+ failed attempts/
    assert h.node in TestCluster.connected(app)
  end

  test "a black-holed address: nothing answers, while the connect hangs and after it failed",
       %{api: api, prefix: prefix} do
    epmd_port = TestCluster.free_port()
    # A connect to a hole gives up after net_setuptime (OTP's default is 7 s).
    app = explainer(epmd_port, args: ["-kernel", "net_setuptime", "2"])
    [hole] = TestCluster.allocate_addresses(1)
    dist_port = TestCluster.dist_port()
    # A firewall that drops everything: the epmd and distribution ports.
    _sockets = TestCluster.black_hole(hole, dist_port) ++ TestCluster.black_hole(hole, epmd_port)
    add_droplet(api, "#{prefix}-a", app.address)
    add_droplet(api, "#{prefix}-hole", hole)
    TestCluster.start_strategy(app, :droplets, config(api, node_basename: "app"))

    # A timeout is what a hole gives, whatever the machine's speed.
    hole_finding = {:nothing_answers, {epmd_port, :timeout}, {dist_port, :timeout}}
    {_report, e} = await_stage(app, "#{prefix}-hole", :connecting, probe_timeout: 300)
    assert e.finding == hole_finding

    {report, e} = await_stage(app, "#{prefix}-hole", :connect_failed, probe_timeout: 300)
    assert e.finding == hole_finding

    # The diagnosis runs in the caller: while it waits on the hole (at
    # least twice its 4 s timeout, whatever the machine's speed), the
    # strategy answers and keeps polling.
    pid =
      TestCluster.call(app, :persistent_term, :get, [
        {LibclusterDroplet.Explain, :strategy, :droplets}
      ])

    slow = Task.async(fn -> explain(app, probe_timeout: 4_000) end)
    polls = TestCluster.call(app, :sys, :get_state, [pid]).schedule.polls

    TestCluster.await(fn ->
      TestCluster.call(app, :sys, :get_state, [pid]).schedule.polls >= polls + 2
    end)

    assert Task.yield(slow, 0) == nil, "the diagnosis ended before the strategy answered"
    assert entry(Task.await(slow, 60_000), "#{prefix}-hole").finding == hole_finding

    assert Droplet.format_explanation(report) =~
             "nothing answers at #{hole}: epmd port #{epmd_port} did not answer in time, " <>
               "distribution port #{dist_port} did not answer in time"
  end

  test "this node missing from the selection: the check names the node names expected",
       %{api: api, prefix: prefix} do
    closed_epmd = TestCluster.free_port()
    # Named after something else than its droplet.
    stray = explainer(closed_epmd, name: "stray")
    [b_address] = TestCluster.allocate_addresses(1)
    add_droplet(api, "#{prefix}-own", stray.address)
    add_droplet(api, "#{prefix}-b", b_address)
    TestCluster.start_strategy(stray, :droplets, config(api))

    report = TestCluster.await(fn -> (r = explain(stray)) && r.facts.view && r end)

    assert {:warning, text} = check(report, "is not among the 2 selected droplets")
    assert text =~ inspect(stray.node)
    assert text =~ inspect(:"#{prefix}-own@#{stray.address}")
    assert text =~ inspect(:"#{prefix}-b@#{b_address}")
    assert entry(report, "#{prefix}-b").stage == :not_joining
    assert entry(report, "#{prefix}-own").stage == :not_joining

    assert Droplet.format_explanation(report) =~
             "WARNING this node #{inspect(stray.node)} is not among the 2 selected droplets, so it joins no one"
  end

  test "who polls: the poller shares, a follower names it and explains the share it applied",
       %{api: api, prefix: prefix} do
    closed_epmd = TestCluster.free_port()
    [a, b] = Enum.map(1..2, fn _ -> explainer(closed_epmd) end)
    [first, second] = Enum.sort_by([a, b], & &1.node)
    for n <- [a, b], do: add_droplet(api, "#{prefix}-#{n.address}", n.address)

    for n <- [a, b],
        do: TestCluster.start_strategy(n, :droplets, config(api, node_basename: "app"))

    report =
      TestCluster.await(fn ->
        r = explain(second)

        match?({:follows, _, _}, r.facts.polling) and match?({:share, _}, r.facts.view.source) and
          r
      end)

    assert report.facts.polling |> elem(1) == first.node
    assert {:info, text} = check(report, "this node follows")
    assert text =~ "#{inspect(first.node)}, which polls the API for the cluster"
    assert entry(report, "#{prefix}-#{first.address}").stage == :connected
    assert Droplet.format_explanation(report) =~ "in the share from #{inspect(first.node)}"

    report = explain(first)
    assert report.facts.polling == :leads
    assert {:info, _} = check(report, "this node polls the API for the cluster and shares")
  end

  test "a follower explains the droplets the poller filtered out, with their reasons",
       %{api: api, prefix: prefix} do
    closed_epmd = TestCluster.free_port()
    [a, b] = Enum.map(1..2, fn _ -> explainer(closed_epmd) end)
    [first, second] = Enum.sort_by([a, b], & &1.node)
    for n <- [a, b], do: add_droplet(api, "#{prefix}-#{n.address}", n.address)
    [far] = TestCluster.allocate_addresses(1)
    far_droplet = FakeAPI.droplet(id: 77, name: "#{prefix}-far", private_ip: far, region: "sfo3")
    FakeAPI.add_droplet(api, far_droplet)
    config = config(api, node_basename: "app", regions: ["nyc3"])
    for n <- [a, b], do: TestCluster.start_strategy(n, :droplets, config)

    # The follower never listed: it knows the sfo3 droplet from the share.
    report =
      TestCluster.await(fn ->
        r = explain(second)
        r.facts.view != nil and match?({:share, _}, r.facts.view.source) and r
      end)

    assert report.facts.polling |> elem(1) == first.node
    e = entry(report, "#{prefix}-far")
    assert e.stage == :outside_filters
    assert e.verdict.why == [regions: "sfo3"]
    assert Droplet.format_explanation(report) =~ "region sfo3 is not among :regions"
  end
end
