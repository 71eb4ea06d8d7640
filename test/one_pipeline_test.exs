defmodule LibclusterDroplet.OnePipelineTest do
  @moduledoc false
  # Issue 17's "one place decides stages": the same listing, seen by a
  # running strategy, by its explain/2 and by `mix libcluster_droplet.explain`,
  # gives the same verdict for every droplet, every stage included.
  use ExUnit.Case, async: false

  alias Cluster.Strategy.Droplet
  alias Cluster.Strategy.Droplet.Config
  alias LibclusterDroplet.{FakeAPI, SpyMembership, TestCluster}

  @token "dop_v1_one_pipeline_secret_1a2b3c4d"

  test "the strategy, explain and the mix task read the same verdicts" do
    [a, b, c] = TestCluster.allocate_addresses(3)

    droplets = [
      FakeAPI.droplet(id: 1, name: "web-1", private_ip: a),
      FakeAPI.droplet(id: 2, name: "web-2", private_ip: b),
      # The same node name as web-2: a duplicate, the first keeps it.
      FakeAPI.droplet(id: 3, name: "web-2", private_ip: b),
      FakeAPI.droplet(id: 4, name: "far", private_ip: c, region: "ams3"),
      FakeAPI.droplet(id: 5, name: "off", private_ip: nil, status: "off"),
      FakeAPI.droplet(id: 6, name: "no-private", private_ip: nil),
      FakeAPI.droplet(id: 7, name: "bad.name", private_ip: c)
    ]

    {:ok, api} = FakeAPI.start_link(token: @token, droplets: droplets)

    config = [
      token: @token,
      api_url: FakeAPI.url(api),
      regions: ["nyc3"],
      polling_interval: 60_000
    ]

    spy = SpyMembership.start()

    pid =
      start_supervised!(
        {Droplet, [topology: :one_pipeline, config: config] ++ SpyMembership.mfas(spy)}
      )

    TestCluster.await(fn -> :sys.get_state(pid).view != nil end)
    strategy = :sys.get_state(pid).view.verdicts
    {:ok, explained} = Droplet.explain(pid, print: false, probe_timeout: 100)

    {:ok, offline} =
      Mix.Tasks.LibclusterDroplet.Explain.report(:one_pipeline, Config.new!(config),
        probe_timeout: 100
      )

    compare = fn verdicts -> Enum.map(verdicts, &{&1.id, &1.name, &1.stage, &1.node, &1.why}) end
    expected = compare.(strategy)

    assert compare.(Enum.map(explained.entries, & &1.verdict)) == expected
    assert compare.(Enum.map(offline.entries, & &1.verdict)) == expected

    assert Enum.map(strategy, &{&1.name, &1.stage}) == [
             {"web-1", :selected},
             {"web-2", :selected},
             {"web-2", :duplicate},
             {"far", :outside_filters},
             {"off", :not_active},
             {"no-private", :no_address},
             {"bad.name", :unusable_name}
           ]
  end
end
