defmodule LibclusterDroplet.ExplainTest do
  @moduledoc false
  # The pure side of explain (stages, checks, conclusions, rendering, the
  # node watch) and the diagnosis against local listeners; the strategy's
  # explain/2 in this VM. Real nodes: explain_cluster_test.exs.
  use ExUnit.Case, async: true

  import ExUnit.CaptureIO

  alias LibclusterDroplet.{
    Explain,
    FakeAPI,
    NodeWatch,
    Pipeline,
    SpyMembership,
    TestCluster,
    Verdict
  }

  alias LibclusterDroplet.Explain.{Checks, Diagnosis, Entry, Facts, Format, Report}

  doctest LibclusterDroplet.Explain
  doctest LibclusterDroplet.Explain.Diagnosis
  doctest LibclusterDroplet.Explain.Format
  doctest LibclusterDroplet.NodeWatch

  @self :"app@10.0.0.2"
  @vpc_a "760e09ef-dc84-11e8-981e-3cfdfeaae000"
  @vpc_b "5a4981aa-9653-4bd1-bef5-d6bff52042e4"
  @config %{
    node_basename: "app",
    require_listed: true,
    network: :private,
    ipv6: false,
    health_check: {:tcp, port: 4000, timeout: 500},
    coordinate: true,
    polling_interval: 5_000,
    regions: ["nyc3"],
    vpc: @vpc_a
  }

  # A droplet as listed: `{name, status, address}` or with its region and VPC.
  defp droplet({name, status, address}), do: droplet({name, status, address, "nyc3", @vpc_a})

  defp droplet({name, status, address, region, vpc}),
    do: %{name: name, status: status, address: address, region: region, vpc_uuid: vpc}

  # The facts of a view of `droplets`, their verdicts decided by the pipeline.
  defp facts(droplets, extra \\ []) do
    facts =
      struct!(
        %Facts{
          topology: :droplets,
          self: @self,
          now: 1_700_000_100_000,
          alive?: true,
          longnames?: true,
          config: @config,
          polls: 7,
          last_poll_at: 1_700_000_099_000
        },
        extra
      )

    self = if facts.mode == :offline, do: nil, else: facts.self

    {:ok, verdicts} = Pipeline.from_listing(Enum.map(droplets, &droplet/1), facts.config, self)

    health = for {node, %{result: result}} <- facts.probes, into: %{}, do: {node, result}
    verdicts = if health == %{}, do: verdicts, else: Pipeline.with_health(verdicts, health)
    view(facts, verdicts)
  end

  defp view(facts, verdicts) do
    %{
      facts
      | view: %{
          source: :listing,
          listed_at: 1_700_000_000_000,
          applied_at: 1_700_000_099_000,
          verdicts: verdicts
        }
    }
  end

  defp probe(result, failed),
    do: %{result: result, took_ms: 500, exact?: true, at: 0, failed: failed, warned?: false}

  defp names(entries), do: Enum.map(entries, &{&1.verdict.name, &1.stage})
  defp checks(facts), do: Checks.checks(facts)
  defp format(facts), do: Format.format(Explain.report(facts))

  describe "entries" do
    test "every stage a droplet can stop at, in the order it goes through them" do
      droplets = [
        {"a-self", :active, "10.0.0.2"},
        {"b-far", :active, "10.0.0.3", "ams3", @vpc_b},
        {"c-off", :off, nil},
        {"d-nowhere", :active, nil},
        {"e-conn", :active, "10.0.0.5"},
        {"f-dup", :active, "10.0.0.5"},
        {"g-sick", :active, "10.0.0.7"},
        {"h-fail", :active, "10.0.0.8"},
        {"i-flight", :active, "10.0.0.9"},
        {"j-new", :active, "10.0.0.10"},
        {"k-bad", :active, "not-an-ip"}
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

      assert names(entries) == [
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

      assert Enum.all?(entries, &(&1.stage in Explain.stages()))

      text = format(facts)
      assert text =~ "\n  ok      distribution is started with long names"
      assert text =~ "\n  info    11 droplets in the API listing"
      assert text =~ "region ams3 is not among :regions; VPC #{@vpc_b} is not the :vpc asked for"
      assert text =~ "status off: only active droplets are selected"
      assert text =~ "no private IPv4 address"
      assert text =~ "an earlier droplet of the listing has the same node name"
      assert text =~ "since 2023-11-14T22:14:00Z (1 min 0 s ago)"
      # Connected, failing one probe: kept until the strikes run out.
      assert text =~ "failed its last 1 health check(s) (connection refused)"
      assert text =~ "port 4000: no answer within 500 ms, 4 in a row"

      assert text =~
               "3 connects failed in a row (net_kernel could not set up the connection), next attempt in 4.0 s"

      assert text =~ "a connect is in flight"
      assert text =~ "selected; its connect has not started yet (at most 64 run at once)"
      assert text =~ ~s("not-an-ip" is not an IP address)

      assert Format.summary(Explain.report(facts)) ==
               "11 droplets: 1 outside filters, 1 not active, 1 no address, 1 unusable name, " <>
                 "1 duplicate, 1 this node, 1 health failed, 1 pending, 1 connecting, " <>
                 "1 connect failed, 1 connected"
    end

    test "stages are the verdicts': none is decided again" do
      # Verdicts the pipeline would not give for this listing: explain
      # shows them as they are.
      verdicts = [
        %Verdict{
          name: "web-1",
          status: :active,
          address: "10.0.0.3",
          stage: :duplicate,
          node: :"app@10.0.0.3"
        },
        %Verdict{
          name: "web-2",
          status: :active,
          address: "10.0.0.4",
          stage: :outside_filters,
          why: [regions: "nyc3"]
        },
        %Verdict{
          name: "web-3",
          status: :off,
          address: "10.0.0.5",
          stage: :selected,
          node: :"app@10.0.0.5"
        },
        %Verdict{
          name: "web-4",
          status: :active,
          address: "10.0.0.2",
          stage: :this_node,
          node: :"x@10.0.0.2"
        }
      ]

      facts = view(facts([]), verdicts)

      assert names(Explain.entries(facts)) == [
               {"web-1", :duplicate},
               {"web-2", :outside_filters},
               {"web-3", :pending},
               {"web-4", :this_node}
             ]

      assert Enum.map(Explain.entries(facts), & &1.verdict) == verdicts
      assert {:ok, "this node is among the selected droplets (2 in all)"} in checks(facts)
    end

    test "a selected node that failed its check in the verdict, without a probe on record" do
      verdicts = [
        %Verdict{
          name: "web-3",
          status: :active,
          address: "10.0.0.3",
          stage: :selected,
          node: :"app@10.0.0.3",
          health: {:error, :refused}
        },
        %Verdict{
          name: "web-2",
          status: :active,
          address: "10.0.0.2",
          stage: :this_node,
          node: @self
        }
      ]

      facts = view(facts([]), verdicts)
      assert [%Entry{stage: :health_failed, probe: nil} = entry, _] = Explain.entries(facts)
      assert Format.detail(entry, facts) == "failed its health check: connection refused"
    end

    test "a managed node failing its first probes is still connecting, not left out" do
      facts =
        facts([{"web-3", :active, "10.0.0.3"}, {"web-2", :active, "10.0.0.2"}],
          probes: %{:"app@10.0.0.3" => probe({:error, :refused}, 1)},
          managed: [:"app@10.0.0.3"],
          connects: %{:"app@10.0.0.3" => %{count: 1, reason: false, retry_at: 0}}
        )

      assert [%Entry{stage: :connect_failed}, %Entry{stage: :this_node}] = Explain.entries(facts)
      # Unmanaged (three strikes, or never passed): left out by its health check.
      assert [%Entry{stage: :health_failed}, _] = Explain.entries(%{facts | managed: []})
    end

    test "a node that must be listed and is not: every selected node is not joining" do
      facts = facts([{"web-1", :active, "10.0.0.3"}], managed: [])
      assert [%Entry{stage: :not_joining}] = Explain.entries(facts)

      assert Format.format(Explain.report(facts)) =~
               "this node is not among the selected droplets, so it connects to no one"

      facts = put_in(facts.config.require_listed, false)
      assert [%Entry{stage: :pending}] = Explain.entries(facts)

      # Without distribution nothing says it must be listed.
      assert [%Entry{stage: :pending}] =
               Explain.entries(%{facts([{"web-1", :active, "10.0.0.3"}]) | alive?: false})
    end

    test "offline: healthy nodes are candidates, failing ones failed; nothing is this node" do
      facts =
        facts(
          [
            {"web-1", :active, "10.0.0.3"},
            {"web-2", :active, "10.0.0.4"},
            {"app", :active, "10.0.0.2"}
          ],
          mode: :offline,
          self: :nonode@nohost,
          probes: %{:"app@10.0.0.4" => probe({:error, :refused}, 1)}
        )

      assert Enum.map(Explain.entries(facts), & &1.stage) == [
               :candidate,
               :health_failed,
               :candidate
             ]

      assert Diagnosis.to_diagnose(Explain.report(facts)) |> Enum.map(& &1.verdict.name) == [
               "web-1",
               "app"
             ]

      assert Explain.report(facts).checks == [
               {:info, "3 droplets in the API listing of 2023-11-14T22:13:20Z"}
             ]

      assert format(facts) =~ "listed from this machine"
    end

    test "without a view there are no entries, and the checks say so" do
      report = Explain.report(%{facts([], last_poll_at: nil, polls: 0) | view: nil})
      assert report.entries == []
      assert {:info, "no API poll has succeeded yet on this node"} in report.checks

      assert {:info, "no view yet: whether this node is among the selected droplets is not known"} in report.checks

      assert Format.format(report) =~ "(no droplets in the last view)"
      assert Format.summary(report) == "0 droplets"
    end

    test "put_findings/2 puts each finding into its node's entry" do
      facts =
        facts([{"web-3", :active, "10.0.0.3"}, {"web-2", :active, "10.0.0.2"}],
          managed: [:"app@10.0.0.3"],
          in_flight: [:"app@10.0.0.3"]
        )

      report = Explain.report(facts)
      assert [%Entry{stage: :connecting}] = Diagnosis.to_diagnose(report)
      report = Diagnosis.put_findings(report, %{:"app@10.0.0.3" => {:not_registered, []}})
      assert [%Entry{finding: {:not_registered, []}}, %Entry{finding: nil}] = report.entries
      assert Format.format(report) =~ "epmd at 10.0.0.3 answers but lists no node"
    end

    test "a follower's view: the share's verdicts, those outside the filters included" do
      {:ok, leader} =
        Pipeline.from_listing(
          Enum.map(
            [
              {"web-1", :active, "10.0.0.1"},
              {"sfo", :active, "10.0.0.9", "sfo3", @vpc_a},
              {"web-2", :active, "10.0.0.2"}
            ],
            &droplet/1
          ),
          @config,
          :"app@10.0.0.1"
        )

      share = %LibclusterDroplet.Share{
        topology: :droplets,
        from: :"app@10.0.0.1",
        fingerprint: 1,
        interval: 5_000,
        seq: 1,
        listed_at: 1_700_000_000_000,
        verdicts: leader
      }

      verdicts = Pipeline.from_share(share, "app", @self)

      facts = %{
        view(facts([]), verdicts)
        | view: %{view(facts([]), verdicts).view | source: {:share, :"app@10.0.0.1"}}
      }

      assert names(Explain.entries(facts)) == [
               {"web-1", :pending},
               {"sfo", :outside_filters},
               {"web-2", :this_node}
             ]

      text = format(facts)
      assert text =~ "region sfo3 is not among :regions"
      assert text =~ ~s(3 droplets in the share from :"app@10.0.0.1" of 2023-11-14T22:13:20Z)
    end
  end

  describe "checks of this node" do
    test "distribution: not started, short names, long names" do
      [{level, text} | _] = checks(facts([], alive?: false, self: :nonode@nohost))
      assert level == :warning and text =~ "distribution is not started"
      # Not alive: whether it is listed does not matter.
      refute Enum.any?(checks(facts([], alive?: false)), fn {_, t} -> t =~ "selected droplets" end)

      [{:warning, text} | _] = checks(facts([], longnames?: false, self: :app@web1))
      assert text =~ "short names"

      [{:ok, text} | _] = checks(facts([]))
      assert text =~ "long names"
    end

    test "misnamed: the name its own droplet needs, found by its address, then up to 4 others" do
      droplets = [
        {"web-2", :active, "10.0.0.2"} | for(i <- 3..9, do: {"web-#{i}", :active, "10.0.0.#{i}"})
      ]

      facts = facts(droplets, self: :"wrong@10.0.0.2")

      assert {:warning, text} =
               Enum.find(checks(facts), fn {_, t} ->
                 t =~ "is not among the 8 selected droplets"
               end)

      assert text =~
               ~s(this node :"wrong@10.0.0.2" is not among the 8 selected droplets, so it joins no one; ) <>
                 ~s(its droplet, found by its address, is named :"app@10.0.0.2"; ) <>
                 ~s(others are :"app@10.0.0.3", :"app@10.0.0.4", :"app@10.0.0.5", :"app@10.0.0.6": ) <>
                 "fix RELEASE_NODE (basename@ the droplet's private IPv4 address) or :node_basename"

      refute text =~ ~s(:"app@10.0.0.7")
    end

    test "misnamed, and no droplet at its address: up to 4 of the names the strategy computes" do
      droplets = for i <- 3..9, do: {"web-#{i}", :active, "10.0.0.#{i}"}

      {:warning, text} =
        Enum.find(checks(facts(droplets)), fn {_, t} -> t =~ "selected droplets" end)

      assert text =~
               "no listed droplet has this node's address; the strategy computes names such as " <>
                 ~s(:"app@10.0.0.3", :"app@10.0.0.4", :"app@10.0.0.5", :"app@10.0.0.6":)

      refute text =~ ~s(:"app@10.0.0.7")

      {:warning, text} = Enum.find(checks(facts([])), fn {_, t} -> t =~ "selected droplets" end)
      assert text =~ "names such as none"
    end

    test "not listed, and require_listed: false: said, not warned" do
      facts = put_in(facts([{"web-3", :active, "10.0.0.3"}]).config.require_listed, false)

      assert {:info,
              ~s(this node :"app@10.0.0.2" is not among the selected droplets; require_listed: false lets it join anyway)} in checks(
               facts
             )

      refute Checks.unlisted?(facts)
      assert Checks.unlisted?(put_in(facts.config.require_listed, true))
      refute Checks.unlisted?(%{facts | mode: :offline})
    end

    test "failing polls, who polls, the floor, the nodes asked to leave" do
      facts = facts([], failures: 3, last_error: {:http_status, "HTTP 503"})

      assert {:warning, text} = Enum.find(checks(facts), fn {_, t} -> t =~ "API polls failed" end)

      assert text ==
               "the last 3 API polls failed (http_status: HTTP 503); the last success was 1.0 s ago; membership is kept as it is"

      assert {:ok, "last successful API poll 1.0 s ago (7 in all)"} in checks(facts([]))

      follows = facts([], polling: {:follows, :"app@10.0.0.1", 1_700_000_099_500})

      assert {:info,
              "this node follows :\"app@10.0.0.1\", which polls the API for the cluster (its last share arrived 500 ms ago)"} in checks(
               follows
             )

      assert {:info, "this node polls the API for the cluster and shares what it finds"} in checks(
               facts([], polling: :leads)
             )

      alone = put_in(facts([]).config.coordinate, false)
      assert {:info, "coordinate: false: this node polls the API on its own"} in checks(alone)

      assert {:info, "the API's rate limit holds every request back for 30.0 s more"} in checks(
               facts([], not_before: 1_700_000_130_000)
             )

      refute Enum.any?(checks(facts([], not_before: 1_700_000_000_000)), fn {_, t} ->
               t =~ "rate limit"
             end)

      assert {:info,
              ~s[asked to leave, still connected: :"old@10.0.0.9" (their droplets are no longer selected)]} in checks(
               facts([], removing: [:"old@10.0.0.9"])
             )
    end
  end

  test "the autoscale pool: its members, and how its droplets are listed" do
    pool = %{id: "p-1", name: "web-pool", tags: ["k8s:web"], members: 3, active: 2}
    facts = facts([{"web-3", :active, "10.0.0.3"}])
    facts = put_in(facts.view[:pool], pool)

    text =
      ~s[autoscale pool "web-pool" (p-1): 3 members, 2 active; ] <>
        ~s[its droplets are listed by the template's tag "k8s:web"]

    assert {:info, text} in checks(facts)
    assert {:info, text} in checks(%{facts | mode: :offline})

    untagged = put_in(facts.view.pool.tags, [])

    assert Enum.any?(checks(untagged), fn {_, t} ->
             t =~ "its template has no tag, so every droplet page is listed at each poll"
           end)

    refute Enum.any?(checks(facts([])), fn {_, t} -> t =~ "autoscale pool" end)
  end

  test "Facts.config/1 keeps what shapes an explanation, never the token" do
    config =
      Cluster.Strategy.Droplet.Config.new!(token: "dop_v1_explain_facts_token", regions: ["nyc3"])

    facts_config = Facts.config(config)
    refute Map.has_key?(facts_config, :token)
    assert %{regions: ["nyc3"], vpc: nil, node_basename: nil, require_listed: true} = facts_config
    refute inspect(facts_config) =~ "explain_facts_token"
  end

  describe "conclusions" do
    @node :"app@10.0.0.3"
    defp probes(epmd, dist_port, dist),
      do: %{epmd_port: 4369, epmd: epmd, dist_port: dist_port, dist: dist}

    test "the distribution port's answer first, then epmd's" do
      assert Diagnosis.conclude(@node, probes({:ok, []}, 9100, {:node, "app@10.0.0.3"}), false) ==
               {:answers, "app@10.0.0.3", 9100}

      assert Diagnosis.conclude(@node, probes({:ok, []}, 9100, {:status, "not_allowed"}), true) ==
               {:refused, "not_allowed"}

      assert Diagnosis.conclude(@node, probes({:ok, []}, 9100, {:status, "nok"}), true) ==
               {:busy, "nok"}

      assert Diagnosis.conclude(@node, probes({:ok, []}, 9100, {:error, :not_distribution}), true) ==
               {:not_distribution, 9100}

      assert Diagnosis.conclude(
               @node,
               probes({:ok, [{"app", 9100}]}, 9100, {:error, :timeout}),
               true
             ) ==
               {:dist_closed, 9100, :timeout}

      assert Diagnosis.conclude(@node, probes({:ok, []}, nil, nil), true) == {:not_registered, []}

      assert Diagnosis.conclude(@node, probes({:error, :timeout}, nil, nil), true) ==
               {:nothing_answers, {4369, :timeout}, nil}
    end

    test "in words, with what to do" do
      v = %Verdict{
        name: "web-3",
        status: :active,
        stage: :selected,
        node: @node,
        address: "10.0.0.3"
      }

      e = %Entry{verdict: v}
      finding = &Format.describe_finding/2

      assert finding.({:other_node, "app@web-1", 9100}, e) =~
               "runs `app@web-1` (it answered at 10.0.0.3:9100); the strategy expects `app@10.0.0.3`: " <>
                 "name the node after the droplet's address (RELEASE_NODE=app@10.0.0.3)"

      # A remote console's name is not the one to suggest.
      assert finding.({:not_registered, [{"rem-1a2b-web", 9101}, {"web", 9100}]}, e) =~
               ~s(set node_basename: "web")

      assert finding.({:not_registered, []}, e) =~ "lists no node"

      assert finding.({:dist_closed, 9100, :refused}, e) =~
               "epmd lists the node at port 9100, but 10.0.0.3:9100 refused the connection"

      assert finding.({:nothing_answers, {4369, :refused}, nil}, e) ==
               "nothing answers at 10.0.0.3: epmd port 4369 refused the connection; " <>
                 "the droplet is down, its release is not running, or a firewall drops these ports"

      assert finding.({:answers, "app@::1", 9100}, %Entry{verdict: %{v | address: "::1"}}) =~
               "answers at [::1]:9100"

      assert finding.({:cookie_mismatch, 9100}, e) =~ "most likely a cookie mismatch"

      assert finding.({:refused, "not_allowed"}, e) =~
               "refuses the handshake (status not_allowed)"

      assert finding.({:busy, "nok"}, e) =~ "run explain again"
      assert finding.({:not_distribution, 9100}, e) =~ "does not speak Erlang distribution"
    end
  end

  test "a report inspects as a summary" do
    report = Explain.report(facts([{"web-1", :off, nil}]))

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
      droplets = for i <- 2..4, do: {"web-#{i}", :active, "127.0.8.#{i}"}
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
      assert [%Entry{verdict: %Verdict{name: "node-1"}, stage: :health_failed}] = report.entries
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
