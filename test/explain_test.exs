defmodule LibclusterDroplet.ExplainTest do
  @moduledoc false
  # The pure side of explain (stages, checks, conclusions, rendering, the
  # node watch) and the diagnosis against local listeners; the strategy's
  # explain/2 in this VM. Real nodes: explain_cluster_test.exs.
  use ExUnit.Case, async: true

  import ExUnit.CaptureIO
  alias LibclusterDroplet.{Explain, FakeAPI, NodeWatch, SpyMembership, TestCluster}
  alias LibclusterDroplet.Explain.{Diagnosis, Entry, Facts, Report}

  doctest LibclusterDroplet.Explain
  doctest LibclusterDroplet.NodeWatch

  @self :"app@10.0.0.2"

  defp facts(droplets, extra \\ []) do
    struct!(
      %Facts{
        topology: :droplets,
        self: @self,
        now: 1_700_000_100_000,
        alive?: true,
        longnames?: true,
        config: %{
          node_basename: "app",
          require_listed: true,
          network: :private,
          ipv6: false,
          health_check: {:tcp, port: 4000, timeout: 500},
          coordinate: true
        },
        view: %{
          source: :listing,
          listed_at: 1_700_000_000_000,
          applied_at: 1_700_000_099_000,
          droplets: droplets
        },
        polls: 7,
        last_poll_at: 1_700_000_099_000
      },
      extra
    )
  end

  defp probe(result, failed),
    do: %{result: result, took_ms: 500, exact?: true, at: 0, failed: failed, warned?: false}

  describe "stages" do
    test "every stage a droplet can stop at, in the order it goes through them" do
      droplets = [
        {"a-self", :active, "10.0.0.2", []},
        {"b-far", :active, "10.0.0.3", [{:region, "ams3"}, {:vpc, "v2"}]},
        {"c-off", :off, nil, []},
        {"d-nowhere", :active, nil, []},
        {"e-conn", :active, "10.0.0.5", []},
        {"f-dup", :active, "10.0.0.5", []},
        {"g-sick", :active, "10.0.0.7", []},
        {"h-fail", :active, "10.0.0.8", []},
        {"i-flight", :active, "10.0.0.9", []},
        {"j-new", :active, "10.0.0.10", []},
        {"k-bad", :active, "not-an-ip", []}
      ]

      facts =
        facts(droplets,
          probes: %{
            :"app@10.0.0.7" => probe({:error, :timeout}, 4),
            :"app@10.0.0.5" => probe({:error, :refused}, 1)
          },
          connects: %{:"app@10.0.0.8" => %{count: 3, reason: false, retry_at: 1_700_000_104_000}},
          in_flight: [:"app@10.0.0.9"],
          managed: [:"app@10.0.0.5", :"app@10.0.0.8", :"app@10.0.0.9", :"app@10.0.0.10"],
          connected: [:"app@10.0.0.5"],
          since: %{:"app@10.0.0.5" => 1_700_000_040_000}
        )

      entries = Explain.entries(facts)

      assert Enum.map(entries, &{&1.name, &1.stage}) == [
               {"a-self", :this_node},
               {"b-far", :outside_filters},
               {"c-off", :not_active},
               {"d-nowhere", :no_address},
               {"e-conn", :connected},
               {"f-dup", :duplicate},
               {"g-sick", :health_failed},
               {"h-fail", :connect_failed},
               {"i-flight", :connecting},
               {"j-new", :pending},
               {"k-bad", :unusable_name}
             ]

      text = Explain.format(Explain.report(facts))
      assert text =~ "region ams3 is not among :regions; VPC v2 is not the :vpc asked for"
      assert text =~ "status off: only active droplets are selected"
      assert text =~ "no private IPv4 address"
      assert text =~ "since 2023-11-14T22:14:00Z (1 min 0 s ago)"
      # Connected, failing one probe: kept until the strikes run out.
      assert text =~ "failed its last 1 health check(s) (connection refused)"
      assert text =~ "port 4000: no answer within 500 ms, 4 in a row"

      assert text =~
               "3 connects failed in a row (net_kernel could not set up the connection), next attempt in 4.0 s"

      assert text =~ ~s("not-an-ip" is not an IP address)
      assert text =~ "11 droplets: 1 outside filters, 1 not active"
    end

    test "a managed node failing its first probes is still connecting, not left out" do
      facts =
        facts([{"web-3", :active, "10.0.0.3", []}, {"web-2", :active, "10.0.0.2", []}],
          probes: %{:"app@10.0.0.3" => probe({:error, :refused}, 1)},
          managed: [:"app@10.0.0.3"],
          connects: %{:"app@10.0.0.3" => %{count: 1, reason: false, retry_at: 0}}
        )

      assert [%Entry{stage: :this_node}, %Entry{stage: :connect_failed}] = Explain.entries(facts)
      # Unmanaged (three strikes, or never passed): left out by its health check.
      assert [_, %Entry{stage: :health_failed}] = Explain.entries(%{facts | managed: []})
    end

    test "a node that must be listed and is not: every candidate is not joining" do
      facts = facts([{"web-1", :active, "10.0.0.3", []}], managed: [])
      assert [%Entry{stage: :not_joining}] = Explain.entries(facts)

      facts = put_in(facts.config.require_listed, false)
      assert [%Entry{stage: :pending}] = Explain.entries(facts)
    end

    test "offline: healthy candidates are candidates, failing ones failed; nothing is this node" do
      facts =
        facts([{"web-1", :active, "10.0.0.3", []}, {"web-2", :active, "10.0.0.4", []}],
          mode: :offline,
          self: :nonode@nohost,
          probes: %{:"app@10.0.0.4" => probe({:error, :refused}, 1)}
        )

      assert Enum.map(Explain.entries(facts), & &1.stage) == [:candidate, :health_failed]
      assert Explain.to_diagnose(Explain.report(facts)) |> Enum.map(& &1.name) == ["web-1"]
    end

    test "without a view there are no entries, and the checks say so" do
      report = Explain.report(facts([], view: nil, last_poll_at: nil, polls: 0))
      assert report.entries == []
      assert {:info, "no API poll has succeeded yet on this node"} in report.checks
      assert Explain.format(report) =~ "(no droplets in the last view)"
    end
  end

  describe "checks of this node" do
    test "distribution: not started, short names, long names" do
      [{level, text} | _] = Explain.checks(facts([], alive?: false, self: :nonode@nohost))
      assert level == :warning and text =~ "distribution is not started"
      # Not alive: whether it is listed does not matter.
      refute Enum.any?(
               Explain.checks(facts([], alive?: false)),
               fn {_, t} -> t =~ "selected droplets" end
             )

      [{:warning, text} | _] = Explain.checks(facts([], longnames?: false, self: :app@web1))
      assert text =~ "short names"

      [{:ok, text} | _] = Explain.checks(facts([]))
      assert text =~ "long names"
    end

    test "not listed: the names the strategy computes, at most five" do
      droplets = for i <- 3..9, do: {"web-#{i}", :active, "10.0.0.#{i}", []}
      checks = Explain.checks(facts(droplets))

      assert {:warning, text} =
               Enum.find(checks, fn {_, t} -> t =~ "is not among the 7 selected droplets" end)

      assert text =~ ~s(:"app@10.0.0.3", :"app@10.0.0.4")
      assert text =~ ~s(:"app@10.0.0.7")
      refute text =~ ~s(:"app@10.0.0.8")
    end

    test "failing polls, and who polls" do
      facts = facts([], failures: 3, last_error: {:http_status, "HTTP 503"})

      assert {:warning, text} =
               Enum.find(Explain.checks(facts), fn {_, t} -> t =~ "API polls failed" end)

      assert text =~
               "the last 3 API polls failed (http_status: HTTP 503); the last success was 1.0 s ago"

      follows = facts([], polling: {:follows, :"app@10.0.0.1", 1_700_000_099_500})

      assert {:info,
              "this node follows :\"app@10.0.0.1\", which polls the API for the cluster (its last share arrived 500 ms ago)"} in Explain.checks(
               follows
             )

      alone = put_in(facts([]).config.coordinate, false)

      assert {:info, "coordinate: false: this node polls the API on its own"} in Explain.checks(
               alone
             )
    end
  end

  describe "conclusions" do
    @node :"app@10.0.0.3"
    defp probes(epmd, dist_port, dist),
      do: %{epmd_port: 4369, epmd: epmd, dist_port: dist_port, dist: dist}

    test "the distribution port's answer first, then epmd's" do
      assert Explain.conclude(@node, probes({:ok, []}, 9100, {:node, "app@10.0.0.3"}), false) ==
               {:answers, "app@10.0.0.3", 9100}

      assert Explain.conclude(@node, probes({:ok, []}, 9100, {:status, "not_allowed"}), true) ==
               {:refused, "not_allowed"}

      assert Explain.conclude(@node, probes({:ok, []}, 9100, {:status, "nok"}), true) ==
               {:busy, "nok"}

      assert Explain.conclude(@node, probes({:ok, []}, 9100, {:error, :not_distribution}), true) ==
               {:not_distribution, 9100}

      assert Explain.conclude(
               @node,
               probes({:ok, [{"app", 9100}]}, 9100, {:error, :timeout}),
               true
             ) ==
               {:dist_closed, 9100, :timeout}

      assert Explain.conclude(@node, probes({:ok, []}, nil, nil), true) == {:not_registered, []}

      assert Explain.conclude(@node, probes({:error, :timeout}, nil, nil), true) ==
               {:nothing_answers, {4369, :timeout}, nil}
    end

    test "in words, with what to do" do
      e = %Entry{node: @node, address: "10.0.0.3"}

      assert Explain.describe_finding({:other_node, "app@web-1", 9100}, e) =~
               "runs `app@web-1` (it answered at 10.0.0.3:9100); the strategy expects `app@10.0.0.3`: " <>
                 "name the node after the droplet's address (RELEASE_NODE=app@10.0.0.3)"

      # A remote console's name is not the one to suggest.
      assert Explain.describe_finding(
               {:not_registered, [{"rem-1a2b-web", 9101}, {"web", 9100}]},
               e
             ) =~
               ~s(set node_basename: "web")

      assert Explain.describe_finding({:not_registered, []}, e) =~ "lists no node"

      assert Explain.describe_finding({:dist_closed, 9100, :refused}, e) =~
               "epmd lists the node at port 9100, but 10.0.0.3:9100 refused the connection"

      assert Explain.describe_finding({:nothing_answers, {4369, :refused}, nil}, e) ==
               "nothing answers at 10.0.0.3: epmd port 4369 refused the connection; " <>
                 "the droplet is down, its release is not running, or a firewall drops these ports"

      assert Explain.describe_finding({:answers, "app@::1", 9100}, %{e | address: "::1"}) =~
               "answers at [::1]:9100"
    end
  end

  test "a report inspects as a summary" do
    report = Explain.report(facts([{"web-1", :off, nil, []}]))

    assert inspect(report) ==
             "#LibclusterDroplet.Explain.Report<topology: :droplets, 1 droplets: 1 not active>"
  end

  test "the node watch forgets nodes no longer in the view, and notes since when nodes are connected" do
    {watch, []} =
      NodeWatch.probed(
        %NodeWatch{},
        [{:a, "10.0.0.2"}],
        [{"10.0.0.2", {:error, :timeout}}],
        5,
        1,
        500
      )

    assert %{took_ms: 500, exact?: true} = watch.probes[:a]
    watch = NodeWatch.connected(watch, [:a], 10)
    assert NodeWatch.connected(watch, [:a, :b], 20).since == %{a: 10, b: 20}
    assert NodeWatch.keep(watch, MapSet.new([:b])) == %NodeWatch{}
  end

  describe "diagnosis" do
    # A fake epmd: answers NAMES with these lines, then closes.
    defp fake_epmd(names) do
      {:ok, l} = :gen_tcp.listen(0, [:binary, ip: {127, 0, 8, 1}, active: false, reuseaddr: true])
      {:ok, port} = :inet.port(l)

      spawn_link(fn ->
        {:ok, s} = :gen_tcp.accept(l)
        {:ok, <<1::16, ?n>>} = :gen_tcp.recv(s, 3)
        text = Enum.map_join(names, fn {n, p} -> "name #{n} at port #{p}\n" end)
        :gen_tcp.send(s, <<port::32, text::binary>>)
        :gen_tcp.close(s)
        Process.sleep(:infinity)
      end)

      port
    end

    test "epmd's NAMES, parsed; a closed port is refused" do
      port = fake_epmd([{"web", 9100}, {"rem-x-web", 40_001}])

      assert Diagnosis.epmd_names({127, 0, 8, 1}, port, 5_000) ==
               {:ok, [{"web", 9100}, {"rem-x-web", 40_001}]}

      assert Diagnosis.epmd_names({127, 0, 8, 1}, TestCluster.free_port(), 5_000) ==
               {:error, :refused}
    end

    test "a handshake with something that is not an Erlang node" do
      {:ok, l} = :gen_tcp.listen(0, [:binary, ip: {127, 0, 8, 2}, active: false])
      {:ok, port} = :inet.port(l)

      spawn_link(fn ->
        {:ok, s} = :gen_tcp.accept(l)
        {:ok, _} = :gen_tcp.recv(s, 0)
        :gen_tcp.send(s, "HTTP/1.1 400 Bad Request\r\n\r\n")
        Process.sleep(:infinity)
      end)

      assert Diagnosis.handshake({127, 0, 8, 2}, port, 5_000, "x@localhost") ==
               {:error, :not_distribution}
    end

    test "the epmd port: the option, else this VM's, else 4369" do
      assert Diagnosis.epmd_port(epmd_port: 4400) == 4400
      # This VM was started without -epmd_port.
      assert Diagnosis.epmd_port([]) == String.to_integer(System.get_env("ERL_EPMD_PORT", "4369"))
    end

    test "at most max_diagnosed nodes are diagnosed, and the report says so" do
      droplets = for i <- 2..4, do: {"web-#{i}", :active, "127.0.8.#{i}", []}
      closed = TestCluster.free_port()

      report =
        facts(droplets, mode: :offline, self: :nonode@nohost, probes: %{})
        |> Explain.report()
        |> Diagnosis.run(
          max_diagnosed: 2,
          epmd_port: closed,
          dist_port: closed,
          probe_timeout: 5_000
        )

      assert report.entries |> Enum.map(& &1.finding) |> Enum.count(&(&1 != nil)) == 2

      assert {:info, "diagnosed 2 of the 3 nodes that did not connect (max_diagnosed)"} in report.checks

      assert [{:nothing_answers, {^closed, :refused}, {^closed, :refused}} | _] =
               report.entries |> Enum.map(& &1.finding) |> Enum.reject(&is_nil/1)
    end

    test "the distribution port epmd lists is tried for the expected name" do
      port = fake_epmd([{"app", TestCluster.free_port()}])

      assert %{epmd: {:ok, [{"app", dist}]}, dist_port: dist, dist: {:error, :refused}} =
               Diagnosis.probe(:"app@127.0.8.1", "127.0.8.1",
                 epmd_port: port,
                 probe_timeout: 5_000
               )
    end
  end

  describe "the strategy's explain/2 in this VM" do
    @token "dop_v1_explain_local_token"

    test "a topology that runs nowhere" do
      out =
        capture_io(fn ->
          assert Cluster.Strategy.Droplet.explain(:no_such_topology) == {:error, :not_running}
        end)

      assert out =~
               "no Cluster.Strategy.Droplet runs topology :no_such_topology on :nonode@nohost"
    end

    test "what it keeps per node is bounded by the view: a droplet gone is forgotten" do
      droplets = [
        FakeAPI.droplet(id: 1, name: "node-1", private_ip: "127.0.9.12"),
        FakeAPI.droplet(id: 2, name: "node-2", private_ip: "127.0.9.13")
      ]

      {:ok, api} = FakeAPI.start_link(token: @token, droplets: droplets)
      topology = :"explain_#{System.unique_integer([:positive])}"
      spy = SpyMembership.start()

      config = [
        token: @token,
        api_url: FakeAPI.url(api),
        polling_interval: 100,
        max_requests_per_minute: 60_000,
        # Nothing listens there: both fail their probes.
        health_check: {:tcp, port: TestCluster.free_port(), timeout: 2_000}
      ]

      pid =
        start_supervised!(
          {Cluster.Strategy.Droplet,
           [topology: topology, config: config] ++ SpyMembership.mfas(spy)}
        )

      TestCluster.await(fn -> map_size(:sys.get_state(pid).members.watch.probes) == 2 end)
      FakeAPI.remove_droplet(api, 2)

      TestCluster.await(fn ->
        Map.keys(:sys.get_state(pid).members.watch.probes) == [:"node-1@127.0.9.12"]
      end)

      {:ok, report} = Cluster.Strategy.Droplet.explain(topology, print: false)
      assert Map.keys(report.facts.probes) == [:"node-1@127.0.9.12"]
      assert [%Entry{name: "node-1", stage: :health_failed}] = report.entries
    end

    test "found by its topology, printed as a table by default, and the token never shows" do
      droplets = [
        FakeAPI.droplet(id: 1, name: "node-1", private_ip: "127.0.9.2"),
        FakeAPI.droplet(id: 2, name: "node-2", private_ip: "127.0.9.3"),
        FakeAPI.droplet(id: 3, name: "node-3", status: "off", private_ip: "127.0.9.4")
      ]

      {:ok, api} = FakeAPI.start_link(token: @token, droplets: droplets)
      spy = SpyMembership.start()
      topology = :"explain_#{System.unique_integer([:positive])}"

      config = [
        token: @token,
        api_url: FakeAPI.url(api),
        polling_interval: 100,
        max_requests_per_minute: 60_000
      ]

      pid =
        start_supervised!(
          {Cluster.Strategy.Droplet,
           [topology: topology, config: config] ++ SpyMembership.mfas(spy)}
        )

      TestCluster.await(fn -> length(SpyMembership.connected(spy)) == 2 end)

      out =
        capture_io(fn ->
          assert {:ok, %Report{} = report} = Cluster.Strategy.Droplet.explain(topology)
          assert Enum.map(report.entries, & &1.stage) == [:connected, :connected, :not_active]
          refute Map.has_key?(report.facts.config, :token)
          refute inspect(report.facts, limit: :infinity, printable_limit: :infinity) =~ @token
        end)

      assert out =~ ~r/DROPLET\s+STATUS\s+ADDRESS\s+NODE\s+STAGE\s+DETAIL/
      assert out =~ ~r/node-1\s+active\s+127.0.9.2\s+node-1@127.0.9.2\s+connected\s+since/
      assert out =~ "3 droplets: 1 not active, 2 connected"
      refute out =~ @token

      # The pid works too; print: false prints nothing.
      assert capture_io(fn -> {:ok, _} = Cluster.Strategy.Droplet.explain(pid, print: false) end) ==
               ""

      refute inspect(:sys.get_state(pid)) =~ @token

      # A strategy that does not answer in time: said so, not waited for.
      :sys.suspend(pid)

      out =
        capture_io(fn ->
          assert Cluster.Strategy.Droplet.explain(topology, timeout: 100) ==
                   {:error, {:no_answer, 100}}
        end)

      :sys.resume(pid)
      assert out =~ "the strategy of topology #{inspect(topology)} did not answer within 100 ms"
      assert {:ok, _} = Cluster.Strategy.Droplet.explain(topology, print: false)
    end
  end
end
