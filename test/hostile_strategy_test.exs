defmodule LibclusterDroplet.HostileStrategyTest do
  @moduledoc false
  # The hostile search over a strategy's whole life: every output (log
  # lines at every level, SASL supervisor, progress and crash reports,
  # telemetry, :sys.get_state/get_status, explain's report and its text,
  # exceptions) is searched for every 12-character window of the token.
  # Each strategy runs on a node of its own, so its log is its own.
  use ExUnit.Case, async: true

  alias Cluster.Strategy.Droplet.Config
  alias LibclusterDroplet.{FakeAPI, TestCluster}
  alias LibclusterDroplet.TestCluster.{Remote, RemoteProbe}
  import LibclusterDroplet.TokenPieces, only: [assert_no_piece: 2]

  @moduletag timeout: 180_000

  # A token whose first 22 digits are letters: a 403 can name a "scope"
  # made of them.
  @letters "deadbeefcafebabefacade"
  @token "dop_v1_" <> binary_part(@letters <> String.duplicate("0123456789abcdef", 3), 0, 64)
  @var "LIBCLUSTER_DROPLET_HOSTILE_TOKEN"

  @events [
    [:libcluster_droplet, :poll, :start],
    [:libcluster_droplet, :poll, :stop],
    [:libcluster_droplet, :poll, :error],
    [:libcluster, :connect_node, :ok],
    [:libcluster, :connect_node, :error],
    [:libcluster, :disconnect_node, :ok],
    [:libcluster, :disconnect_node, :error]
  ]

  defp piece(at, size), do: binary_part(@token, at, size)

  # A node with its own droplet, recording every log event (SASL reports
  # included, debug lines on) and telemetry event, the token in its
  # environment.
  defp hostile_node(api, prefix, droplet_opts \\ []) do
    [address] = TestCluster.allocate_addresses(1)
    name = "#{prefix}#{System.unique_integer([:positive])}"

    FakeAPI.add_droplet(
      api,
      FakeAPI.droplet([id: 1, name: name, private_ip: address] ++ droplet_opts)
    )

    node = TestCluster.start_node(name, address, log_level: :debug)
    on_exit(fn -> TestCluster.stop(node) end)
    TestCluster.call(node, Application, :put_env, [:libcluster, :debug, true])
    TestCluster.call(node, System, :put_env, [@var, @token])
    :ok = TestCluster.call(node, RemoteProbe, :capture_all_logs, [])
    :ok = TestCluster.call(node, RemoteProbe, :record_telemetry, [@events])
    node
  end

  defp config(api, extra) do
    Keyword.merge(
      [
        token: {:system, @var},
        api_url: FakeAPI.url(api),
        polling_interval: 200,
        max_backoff: 400,
        api_timeout: 2_000,
        max_requests_per_minute: 60_000
      ],
      extra
    )
  end

  defp get(node, pid) do
    %{
      state: TestCluster.call(node, :sys, :get_state, [pid]),
      status: TestCluster.call(node, :sys, :get_status, [pid])
    }
  end

  # What explain gives on the node: the report and its text.
  defp explain(node, topology) do
    {:ok, report} =
      TestCluster.call(node, Cluster.Strategy.Droplet, :explain, [topology, [print: false]])

    text = TestCluster.call(node, Cluster.Strategy.Droplet, :format_explanation, [report])
    %{report: report, text: text, inspected: inspect(report)}
  end

  # The strategy crashes when its poll ends (its schedule is garbage); its
  # supervisor restarts it, and it polls again.
  defp crash(node, sup, pid) do
    TestCluster.call(node, RemoteProbe, :put_state, [pid, [:schedule], :not_a_schedule])

    TestCluster.await(fn ->
      new = TestCluster.call(node, Remote, :strategy_pid, [sup])
      new not in [nil, pid] and new
    end)
  end

  # Names every output that holds a piece.
  defp no_piece(outputs) do
    leaks =
      for {what, output} <- outputs,
          message = leak(output),
          do: "#{what}: #{message}"

    assert leaks == [], Enum.join(leaks, "; ")
  end

  defp leak(output) do
    assert_no_piece(output, @token)
    nil
  rescue
    e in ExUnit.AssertionError -> e.message
  end

  defp raw(term), do: inspect(term, structs: false, limit: :infinity, printable_limit: :infinity)

  defp outputs(node) do
    %{
      logs: TestCluster.call(node, RemoteProbe, :logged, []),
      telemetry: TestCluster.call(node, RemoteProbe, :telemetry, [])
    }
  end

  test "a strategy's life, its token read from the environment: faults, a crash, a restart, explain" do
    {:ok, api} = FakeAPI.start_link(token: @token)
    [peer_address, refused] = TestCluster.allocate_addresses(2)
    port = TestCluster.free_port()
    node = hostile_node(api, "hl")
    listeners = for a <- [node.address, peer_address], do: TestCluster.open_port(a, port)
    on_exit(fn -> Enum.each(listeners, &:gen_tcp.close/1) end)

    for {id, name, address, opts} <- [
          # A node that is not there: its connects fail.
          {2, "hl-peer", peer_address, []},
          # Its health check is refused.
          {3, "hl-refused", refused, []},
          {4, "bad.name", peer_address, []},
          {5, "hl-far", peer_address, [region: "ams3"]}
        ],
        do:
          FakeAPI.add_droplet(
            api,
            FakeAPI.droplet([id: id, name: name, private_ip: address] ++ opts)
          )

    config = config(api, regions: ["nyc3"], health_check: {:tcp, port: port, timeout: 300})
    sup = TestCluster.start_strategy(node, :hostile, config)
    pid = TestCluster.call(node, Remote, :strategy_pid, [sup])
    TestCluster.await(fn -> get(node, pid).state.schedule.polls >= 1 end)

    faults = [
      {:status, 401},
      {:status, 403, "You are missing the required scope: droplet:read"},
      {:status, 429},
      {:status, 500},
      {:raw, "<html><body>Bad Gateway</body></html>"},
      {:json, %{"droplets" => [%{"id" => "x"}]}}
    ]

    for {fault, i} <- Enum.with_index(faults, 1) do
      FakeAPI.inject(api, fault)
      # Answered (counted by the API, so no look at the strategy can miss
      # it), then a poll that succeeded.
      TestCluster.await(fn -> Enum.count(FakeAPI.requests(api), & &1.fault) >= i end, 10_000)
      TestCluster.await(fn -> get(node, pid).state.schedule.failures == 0 end, 10_000)
    end

    during = get(node, pid)
    explained = explain(node, :hostile)
    successor = crash(node, sup, pid)
    TestCluster.await(fn -> get(node, successor).state.schedule.polls >= 1 end, 10_000)
    after_crash = get(node, successor)
    %{logs: logs, telemetry: telemetry} = outputs(node)
    log = Enum.join(logs, "\n")

    # Everything was there to search.
    for expected <- [
          "poll failed (unauthorized)",
          "lacks the droplet:read scope",
          "poll failed (rate_limited)",
          "poll failed (http_status)",
          "poll failed (invalid_json)",
          "skipping droplet \"bad.name\"",
          "unable to connect to",
          "terminating",
          "crash_report",
          "supervisor_report",
          "progress"
        ],
        do: assert(log =~ expected, "nothing logged with #{inspect(expected)}")

    assert Enum.any?(telemetry, &match?({[:libcluster_droplet, :poll, :stop], _, _}, &1))
    assert Enum.any?(telemetry, &match?({[:libcluster_droplet, :poll, :error], _, _}, &1))
    assert Enum.any?(telemetry, &match?({[:libcluster, :connect_node, :error], _, _}, &1))
    assert explained.text =~ "hl-far"

    no_piece(
      logs: log,
      telemetry: telemetry,
      state_and_status: during,
      after_restart: after_crash,
      # Structs as maps too: what an Inspect implementation hides is there.
      raw_state: raw([during, after_crash]),
      explain: explained
    )
  end

  test "node_basename holding a piece of a token read at poll time: polls fail naming the option; the piece shows nowhere" do
    {:ok, api} = FakeAPI.start_link(token: @token)
    node = hostile_node(api, "hb")
    basename = "app-" <> piece(7, 16)
    sup = TestCluster.start_strategy(node, :hostile, config(api, node_basename: basename))
    pid = TestCluster.call(node, Remote, :strategy_pid, [sup])
    TestCluster.await(fn -> get(node, pid).state.schedule.failures >= 2 end)

    during = get(node, pid)
    explained = explain(node, :hostile)
    successor = crash(node, sup, pid)
    TestCluster.await(fn -> get(node, successor).state.schedule.failures >= 1 end)
    after_crash = get(node, successor)
    %{logs: logs, telemetry: telemetry} = outputs(node)

    # Nothing was sent: the token was never used with that option.
    assert FakeAPI.request_count(api) == 0

    # The option is named, never its value.
    assert Enum.any?(logs, &(&1 =~ "poll failed (token_in_option)" and &1 =~ ":node_basename"))
    assert during.state.schedule.last_error |> elem(0) == :token_in_option

    # A supervisor's reports print the child spec as the user wrote it
    # (the strategy cannot change what its supervisor prints): the rest
    # is the strategy's own output.
    own = Enum.reject(logs, &(&1 =~ "supervisor_report" or &1 =~ "{:supervisor, :progress}"))
    assert Enum.any?(own, &(&1 =~ "terminating"))

    no_piece(
      logs: own,
      telemetry: telemetry,
      state: during.state,
      status: during.status,
      state_after_restart: after_crash.state,
      explain_report: explained.report,
      explain_text: explained.text
    )
  end

  test "a literal token: an option holding a piece of it is refused at start, naming the option, never a value" do
    for {option, value} <- [
          node_basename: "app-" <> piece(7, 16),
          tag_name: piece(20, 12),
          name: "x" <> piece(30, 14),
          api_url: "http://127.0.0.1:1/" <> piece(40, 20)
        ] do
      config = [token: @token, api_url: "http://127.0.0.1:1"] |> Keyword.put(option, value)
      assert {:error, message} = Config.new(config)
      assert message =~ inspect(option)
      assert_no_piece(message, @token)

      {exception, stacktrace} =
        try do
          Cluster.Strategy.Droplet.start_link(topology: :hostile_literal, config: config)
        rescue
          e -> {e, __STACKTRACE__}
        end

      assert %ArgumentError{} = exception
      assert_no_piece(Exception.format(:error, exception, stacktrace), @token)
    end
  end

  test "values the API echoes (names, tags, regions, a 403's scope) holding pieces of the token show nowhere" do
    {:ok, api} = FakeAPI.start_link(token: @token)
    [other] = TestCluster.allocate_addresses(1)
    node = hostile_node(api, "he")

    for {id, opts} <- [
          # A valid node name (its connects fail: no node runs there).
          {2, name: "web-" <> piece(7, 16), private_ip: other},
          # Not a node name: warned about.
          {3, name: "bad." <> piece(20, 14), private_ip: other},
          {4, name: "tagged", private_ip: other, tags: ["web", piece(30, 13)]},
          # Outside the regions filter: explain names its region.
          {5, name: "far", private_ip: other, region: piece(40, 12)}
        ],
        do: FakeAPI.add_droplet(api, FakeAPI.droplet([id: id] ++ opts))

    sup = TestCluster.start_strategy(node, :hostile, config(api, regions: ["nyc3"]))
    pid = TestCluster.call(node, Remote, :strategy_pid, [sup])
    TestCluster.await(fn -> get(node, pid).state.schedule.polls >= 2 end)
    during = get(node, pid)
    explained = explain(node, :hostile)

    # A 403 naming a "scope" made of the token's letters.
    FakeAPI.inject(api, {:status, 403, "You are missing the required scope: #{@letters}:read"})

    TestCluster.await(fn ->
      match?({:forbidden, _}, get(node, pid).state.schedule.last_error)
    end)

    failed = get(node, pid)
    failed_explained = explain(node, :hostile)
    successor = crash(node, sup, pid)
    TestCluster.await(fn -> get(node, successor).state.schedule.polls >= 1 end)
    %{logs: logs, telemetry: telemetry} = outputs(node)
    assert Enum.any?(logs, &(&1 =~ "poll failed (forbidden)"))

    no_piece(
      logs: logs,
      telemetry: telemetry,
      state: during,
      state_after_403: failed,
      explain: explained,
      explain_after_403: failed_explained
    )
  end

  test "a 403 naming a \"scope\" made of the token's letters: the scope shows nowhere" do
    {:ok, api} =
      FakeAPI.start_link(
        token: @token,
        droplets: [FakeAPI.droplet(id: 1, name: "s-1", private_ip: "127.0.10.2")]
      )

    topology = :"hostile_scope_#{System.unique_integer([:positive])}"
    spy = LibclusterDroplet.SpyMembership.start()
    config = Keyword.put(config(api, []), :token, @token)

    pid =
      start_supervised!(
        {Cluster.Strategy.Droplet,
         [topology: topology, config: config] ++ LibclusterDroplet.SpyMembership.mfas(spy)}
      )

    log =
      ExUnit.CaptureLog.capture_log(fn ->
        FakeAPI.inject(
          api,
          {:status, 403, "You are missing the required scope: #{@letters}:read"}
        )

        TestCluster.await(fn ->
          match?({:forbidden, _}, :sys.get_state(pid).schedule.last_error)
        end)
      end)

    own = log |> String.split("\n") |> Enum.filter(&(&1 =~ "[libcluster:#{topology}]"))
    assert Enum.any?(own, &(&1 =~ "poll failed (forbidden)"))
    {:ok, report} = Cluster.Strategy.Droplet.explain(pid, print: false)

    no_piece(
      log: own,
      state: :sys.get_state(pid),
      status: :sys.get_status(pid),
      explain: Cluster.Strategy.Droplet.format_explanation(report)
    )
  end
end
