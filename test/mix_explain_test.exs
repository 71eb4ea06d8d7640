defmodule Mix.Tasks.LibclusterDroplet.ExplainTest do
  @moduledoc false
  # `mix libcluster_droplet.explain`, run in this VM (not distributed, as
  # a developer's machine) against the fake API and real nodes on their own
  # loopback addresses: it lists, probes and diagnoses, and connects to no one.
  # Not async: it sets the :libcluster application env and an OS variable.
  use ExUnit.Case, async: false

  import ExUnit.CaptureIO
  alias LibclusterDroplet.{FakeAPI, TestCluster}

  @moduletag :cluster
  @moduletag timeout: 120_000

  @token "dop_v1_mix_explain_secret_0f1e2d3c4b5a"
  @var "LIBCLUSTER_DROPLET_MIX_EXPLAIN_TOKEN"

  setup do
    previous = Application.get_env(:libcluster, :topologies)
    System.put_env(@var, @token)

    on_exit(fn ->
      System.delete_env(@var)

      if previous,
        do: Application.put_env(:libcluster, :topologies, previous),
        else: Application.delete_env(:libcluster, :topologies)
    end)

    {:ok, api} = FakeAPI.start_link(token: @token)
    {:ok, api: api}
  end

  defp topology(api, extra \\ []) do
    [
      strategy: Cluster.Strategy.Droplet,
      config:
        Keyword.merge(
          [token: {:system, @var}, api_url: FakeAPI.url(api), node_basename: "app"],
          extra
        )
    ]
  end

  defp run_task(args) do
    capture_io(fn -> Mix.Task.rerun("libcluster_droplet.explain", args) end)
  end

  defp add(api, id, name, address, opts \\ []) do
    FakeAPI.add_droplet(api, FakeAPI.droplet([id: id, name: name, private_ip: address] ++ opts))
  end

  test "lists, probes and diagnoses every droplet, without connecting", %{api: api} do
    [ok_addr, web_addr, sick_addr, gone_addr, far_addr] = TestCluster.allocate_addresses(5)
    port = TestCluster.free_port()
    closed_epmd = TestCluster.free_port()

    # app@ answers as expected; web@ runs where app@ is expected.
    app = TestCluster.start_node("app", ok_addr)
    web = TestCluster.start_node("web", web_addr)
    on_exit(fn -> Enum.each([app, web], &TestCluster.stop/1) end)
    # The health port is open everywhere but on the sick droplet.
    for a <- [ok_addr, web_addr, gone_addr, far_addr], do: TestCluster.open_port(a, port)

    add(api, 1, "m-app", ok_addr)
    add(api, 2, "m-web", web_addr)
    add(api, 3, "m-sick", sick_addr)
    add(api, 4, "m-gone", gone_addr)
    add(api, 5, "m-off", nil, status: "off")
    add(api, 6, "m-far", far_addr, region: "ams3")

    Application.put_env(:libcluster, :topologies,
      droplets:
        topology(api, regions: ["nyc3"], health_check: {:tcp, port: port, timeout: 5_000}),
      other: [strategy: Some.Other.Strategy, config: []]
    )

    dist = TestCluster.dist_port()

    out =
      run_task(["--dist-port", "#{dist}", "--epmd-port", "#{closed_epmd}", "--timeout", "5000"])

    assert out =~ "libcluster_droplet: topology :droplets, listed from this machine"
    assert out =~ "listed 6 droplets with 1 request, 4 selected; nothing connects from here"

    row = fn name -> out |> String.split("\n") |> Enum.find(&(&1 =~ ~r/^  #{name}\s/)) end

    assert row.("m-app") =~ ~r/app@#{ok_addr}\s+candidate\s+port #{port} answered in/
    assert row.("m-app") =~ "`app@#{ok_addr}` answers at #{ok_addr}:#{dist}"

    assert row.("m-web") =~
             ~s|runs `web@#{web_addr}` (it answered at #{web_addr}:#{dist}); the strategy expects `app@#{web_addr}`: set node_basename: "web"|

    assert row.("m-sick") =~ ~r/health failed\s+port #{port}: connection refused/

    assert row.("m-gone") =~
             "nothing answers at #{gone_addr}: epmd port #{closed_epmd} refused the connection, " <>
               "distribution port #{dist} refused the connection"

    assert row.("m-off") =~ "not active"
    assert row.("m-far") =~ "region ams3 is not among :regions"
    assert out =~ "6 droplets: 1 outside filters, 1 not active, 1 health failed, 3 candidate"
    refute out =~ @token

    # Nothing connected: this VM is not even distributed, and the nodes
    # were connected to no one.
    refute Node.alive?()
    assert TestCluster.connected(app) == [] and TestCluster.connected(web) == []
  end

  test "--topology picks among several; mistakes are clear and never show the token", %{api: api} do
    add(api, 1, "m-1", "127.0.10.2")

    # The token from a file, as from a mounted secret.
    path = Path.join(System.tmp_dir!(), "mix_explain_token_#{System.unique_integer([:positive])}")
    File.write!(path, @token <> "\n")
    on_exit(fn -> File.rm(path) end)
    two = put_in(topology(api)[:config][:token], {:file, path})
    Application.put_env(:libcluster, :topologies, one: topology(api), two: two)

    assert_raise Mix.Error, ~r/several Cluster.Strategy.Droplet topologies \(:one, :two\)/, fn ->
      run_task([])
    end

    assert_raise Mix.Error, ~r/no Cluster.Strategy.Droplet topology three/, fn ->
      run_task(["--topology", "three"])
    end

    assert run_task(["--topology", "two", "--epmd-port", "#{TestCluster.free_port()}"]) =~
             "topology :two, listed from this machine"

    # A rejected token: the listing's error, not the token.
    FakeAPI.set_token(api, "dop_v1_another_token")

    error = assert_raise Mix.Error, fn -> run_task(["--topology", "one"]) end

    assert error.message =~ "listing the droplets of topology :one failed (unauthorized)"
    refute error.message =~ @token

    Application.put_env(:libcluster, :topologies, one: topology(api, ipv6: true))

    assert_raise Mix.Error, ~r/invalid option :ipv6: true needs network: :public/, fn ->
      run_task([])
    end

    # This machine has no VPC of its own: vpc: :self shows every VPC.
    FakeAPI.set_token(api, @token)
    Application.put_env(:libcluster, :topologies, one: topology(api, vpc: :self))
    out = run_task(["--epmd-port", "#{TestCluster.free_port()}"])
    assert out =~ "vpc: :self is each node's own VPC: from here, every VPC is shown"
    assert out =~ ~r/m-1\s+active\s+127.0.10.2/

    Application.put_env(:libcluster, :topologies, [])
    assert_raise Mix.Error, ~r/no Cluster.Strategy.Droplet topology/, fn -> run_task([]) end
    assert_raise Mix.Error, ~r/usage: mix libcluster_droplet.explain/, fn -> run_task(["x"]) end
  end
end
