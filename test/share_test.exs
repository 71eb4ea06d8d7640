defmodule LibclusterDroplet.ShareTest do
  @moduledoc false
  # The share protocol: version 3 carries every verdict and the floor; a
  # leader also speaks version 2 (2.0.0's form) for nodes of the previous
  # release, and reads it from them. Nothing else decodes.
  use ExUnit.Case, async: true

  alias LibclusterDroplet.{Pipeline, Share, Verdict}

  doctest LibclusterDroplet.Share

  @tag_ :libcluster_droplet_share

  defp verdicts do
    droplets = [
      %{id: 1, name: "leader", status: :active, address: "10.0.0.2", region: "nyc3"},
      %{id: 2, name: "web-3", status: :active, address: "10.0.0.3", region: "nyc3"},
      %{id: 3, name: "far", status: :active, address: "10.0.0.4", region: "ams3"},
      %{id: 4, name: "off", status: :off, address: nil, region: "nyc3"},
      %{id: 5, name: "gone", status: "archive", address: nil, region: "nyc3"},
      %{id: 6, name: "nowhere", status: :active, address: nil, region: "nyc3"},
      %{id: 7, name: "bad", status: :active, address: "not-an-ip", region: "nyc3"},
      %{id: 8, name: "twin", status: :active, address: "10.0.0.3", region: "nyc3"}
    ]

    {:ok, verdicts} =
      Pipeline.from_listing(droplets, %{regions: ["nyc3"], node_basename: "app"}, :"app@10.0.0.2")

    verdicts
  end

  defp share(extra) do
    struct!(
      %Share{
        topology: :droplets,
        from: :"app@10.0.0.2",
        fingerprint: 123,
        interval: 5_000,
        seq: 7,
        listed_at: 1_700_000_000_000
      },
      extra
    )
  end

  describe "version 3" do
    test "round trip: every verdict, the floor, the view's key" do
      share = share(verdicts: verdicts(), not_before: 1_700_000_030_000)
      assert [{@tag_, 3, :droplets, payload} = v3, _v2] = Share.encode(share)
      assert {:ok, decoded} = Share.decode(v3)
      assert decoded == share
      assert decoded.version == 3 and decoded.droplets == nil
      assert Enum.map(decoded.verdicts, & &1.stage) == Enum.map(verdicts(), & &1.stage)
      # Every droplet of the listing, those outside the filters too.
      assert length(payload.verdicts) == 8
      assert Share.version() == 3
    end

    test "health stays home: each node checks for itself" do
      checked = Pipeline.with_health(verdicts(), :unchecked)
      [v3, _] = Share.encode(share(verdicts: checked))
      {:ok, decoded} = Share.decode(v3)
      assert Enum.all?(decoded.verdicts, &(&1.health == nil))
    end

    test "a notice (no view): version 3 only, with the interval and the floor" do
      notice = Share.new(:droplets, 123, 30_000, {1_700_000_000_000, 7}, 1_700_000_060_000)

      assert %Share{verdicts: nil, droplets: nil, interval: 30_000, seq: 7, from: from} = notice
      assert from == Node.self()
      assert [v3] = Share.encode(notice)
      assert {:ok, ^notice} = Share.decode(v3)

      # No view yet: the oldest key.
      assert %Share{listed_at: 0, seq: 0, not_before: nil} = Share.new(:t, 1, 5_000, nil, nil)
    end

    test "malformed: a bad header, floor or verdict" do
      [{tag, 3, :droplets, payload}, _] = Share.encode(share(verdicts: verdicts()))
      [wire | _] = payload.verdicts

      for bad <- [
            %{payload | interval: 0},
            %{payload | seq: -1},
            %{payload | from: "app@10.0.0.2"},
            %{payload | from: nil},
            %{payload | fingerprint: "123"},
            %{payload | listed_at: 1.5},
            %{payload | not_before: "soon"},
            %{payload | verdicts: :all},
            %{payload | verdicts: [Tuple.delete_at(wire, 0)]},
            %{payload | verdicts: [put_elem(wire, 1, :leader)]},
            %{payload | verdicts: [put_elem(wire, 3, ~c"10.0.0.2")]},
            %{payload | verdicts: [put_elem(wire, 4, :joined)]},
            %{payload | verdicts: [put_elem(wire, 5, "app@10.0.0.2")]},
            %{payload | verdicts: [put_elem(wire, 0, -1.0)]},
            %{payload | verdicts: [put_elem(wire, 2, 1)]},
            # A node to connect to must come with its name and address.
            %{payload | verdicts: [{2, "web-3", :active, "10.0.0.3", :selected, nil, nil}]},
            %{payload | verdicts: [{2, "web-3", :active, nil, :selected, :"app@10.0.0.3", nil}]},
            %{payload | verdicts: [{2, "web-3", :active, nil, :duplicate, :"app@10.0.0.3", nil}]},
            Map.delete(payload, :listed_at),
            Map.delete(payload, :from)
          ] do
        assert Share.decode({tag, 3, :droplets, bad}) == {:error, :malformed}, inspect(bad)
      end
    end
  end

  describe "version 3: why a droplet is outside the filters" do
    defp outside(why), do: {3, "far", :active, "10.0.0.4", :outside_filters, nil, why}

    defp decoded(whys) do
      [{tag, 3, :droplets, payload}, _] = Share.encode(share(verdicts: verdicts()))
      Share.decode({tag, 3, :droplets, %{payload | verdicts: Enum.map(whys, &outside/1)}})
    end

    test "each filter's value, as the pipeline makes it, decodes and is described" do
      member = %{droplet_id: 3, status: "new", health_status: nil}

      whys = [
        [regions: "ams3"],
        [regions: nil],
        [vpc: "760e09ef-dc84-11e8-981e-3cfdfeaae000"],
        [vpc: nil],
        [autoscale_pool: nil],
        [autoscale_pool: member],
        [pool_health: %{member | status: "active", health_status: "unhealthy"}],
        [pool_health: member, regions: "ams3"]
      ]

      assert {:ok, share} = decoded(whys)
      assert Enum.map(share.verdicts, & &1.why) == whys

      for v <- share.verdicts,
          outside <- v.why,
          do: assert(is_binary(LibclusterDroplet.Filters.describe(outside)))
    end

    test "a value of the wrong shape for its filter is malformed, never a crash in describe" do
      for why <- [
            [regions: %{a: 1}],
            [regions: 42],
            [regions: ["nyc3"]],
            [vpc: %{}],
            [vpc: 7],
            [vpc: :self],
            [autoscale_pool: "active"],
            [autoscale_pool: %{status: %{}}],
            [autoscale_pool: %{}],
            [pool_health: "x"],
            [pool_health: nil],
            [pool_health: %{health_status: 1}],
            [pool_health: %{health_status: %{}}],
            [regions: "ams3", vpc: {:a, :b}]
          ] do
        assert decoded([why]) == {:error, :malformed}, inspect(why)
      end
    end
  end

  describe "version 2, for and from nodes of 2.0.0" do
    test "a share with a view is also sent in 2.0.0's exact form: the droplets kept by the filters, with an address" do
      share = share(verdicts: verdicts())
      assert [_v3, {@tag_, 2, :droplets, payload}] = Share.encode(share)

      # The keys 2.0.0 reads, no more.
      assert Enum.sort(Map.keys(payload)) ==
               [:droplets, :fingerprint, :from, :interval, :listed_at, :seq]

      assert %{from: :"app@10.0.0.2", fingerprint: 123, interval: 5_000, seq: 7} = payload
      assert payload.listed_at == 1_700_000_000_000

      assert payload.droplets == [
               {"leader", "10.0.0.2"},
               {"web-3", "10.0.0.3"},
               {"bad", "not-an-ip"},
               {"twin", "10.0.0.3"}
             ]
    end

    test "read by this release, it gives a follower the verdicts of its own listing (filters aside)" do
      [_v3, v2] = Share.encode(share(verdicts: verdicts()))

      assert {:ok, %Share{version: 2, verdicts: nil, droplets: droplets} = decoded} =
               Share.decode(v2)

      assert length(droplets) == 4
      assert Share.view(decoded) == {1_700_000_000_000, 7}

      from_v2 = Pipeline.from_share(decoded, "app", :"app@10.0.0.3")
      {:ok, v3} = Share.decode(hd(Share.encode(share(verdicts: verdicts()))))
      from_v3 = Pipeline.from_share(v3, "app", :"app@10.0.0.3")

      keep = fn verdicts ->
        for v <- verdicts,
            v.stage in [:selected, :this_node, :duplicate, :unusable_name],
            do: {v.name, v.stage, v.node}
      end

      assert keep.(from_v2) == keep.(from_v3)
      assert Pipeline.targets(from_v2) == [{:"app@10.0.0.2", "10.0.0.2"}]
    end

    test "2.0.0's own share decodes; a bad one is malformed" do
      payload = %{
        from: :"web-1@10.0.0.2",
        fingerprint: 1,
        interval: 5_000,
        seq: 3,
        listed_at: 5,
        droplets: [{"web-1", "10.0.0.2"}]
      }

      assert {:ok, %Share{version: 2, droplets: [{"web-1", "10.0.0.2"}], not_before: nil}} =
               Share.decode({@tag_, 2, :t, payload})

      for bad <- [
            %{payload | interval: 0},
            %{payload | seq: -1},
            %{payload | droplets: [{"a", nil}]},
            %{payload | droplets: [{"a"}]},
            %{payload | droplets: nil},
            %{payload | from: "a@h"},
            Map.delete(payload, :listed_at),
            Map.delete(payload, :from)
          ] do
        assert Share.decode({@tag_, 2, :t, bad}) == {:error, :malformed}, inspect(bad)
      end
    end
  end

  describe "other versions and other terms" do
    test "the unversioned share of releases before 2.0.0, a future version, no share at all" do
      assert Share.decode({@tag_, :t, :b@h, 1, []}) == {:error, {:unsupported_version, 1}}
      assert Share.decode({@tag_, 4, :t, %{}}) == {:error, {:unsupported_version, 4}}
      assert Share.decode({@tag_, 1, :t, %{}}) == {:error, {:unsupported_version, 1}}
      assert Share.decode({@tag_}) == {:error, :malformed}
      assert Share.decode({@tag_, "3", :t, %{}}) == {:error, :malformed}
      assert Share.decode(:nothing) == {:error, :malformed}
      assert Share.decode("share") == {:error, :malformed}
    end

    test "share?/1 and sender/1 know every version" do
      assert Share.share?({@tag_, 1})
      refute Share.share?({:other, 1})
      refute Share.share?({})
      refute Share.share?([@tag_])
      assert Share.sender({@tag_, 4, :t, %{from: :a@h}}) == :a@h
      assert Share.sender({@tag_, :t, :b@h, 1, []}) == :b@h
      assert Share.sender({@tag_}) == nil
      assert Share.sender({@tag_, 3, :t, %{from: "a@h"}}) == nil
    end

    test "describe_error/1" do
      assert Share.describe_error({:unsupported_version, 4}) ==
               "protocol version 4, this node speaks 3 and 2"

      assert Share.describe_error(:malformed) == "malformed"
    end
  end

  describe "decode/2: the topology" do
    test "a readable share of another topology is :other_topology; errors stay errors" do
      [v3, v2] = Share.encode(share(verdicts: []))
      assert {:ok, %Share{topology: :droplets}} = Share.decode(v3, :droplets)
      assert {:ok, %Share{topology: :droplets}} = Share.decode(v2, :droplets)
      assert Share.decode(v3, :other) == :other_topology
      assert Share.decode(v2, :other) == :other_topology

      assert Share.decode({@tag_, 4, :droplets, %{}}, :droplets) ==
               {:error, {:unsupported_version, 4}}

      assert Share.decode({@tag_}, :droplets) == {:error, :malformed}
    end
  end

  describe "ordering views" do
    test "newer?/2: by listing time, then by poll count; anything beats no view" do
      assert Share.newer?({2, 0}, {1, 9})
      assert Share.newer?({1, 2}, {1, 1})
      refute Share.newer?({1, 1}, {1, 1})
      refute Share.newer?({0, 9}, {1, 0})
      assert Share.newer?({0, 0}, nil)
    end

    test "newest/2: the share of the newer view, whichever came first" do
      old = share(seq: 1, listed_at: 1_000, verdicts: [])
      new = share(seq: 2, listed_at: 2_000, verdicts: [])
      same_time = share(seq: 3, listed_at: 2_000, verdicts: [])

      assert Share.newest(old, nil) == old
      assert Share.newest(new, old) == new
      assert Share.newest(old, new) == new
      assert Share.newest(same_time, new) == same_time
      assert Share.newest(new, same_time) == same_time
      # A tie keeps the one pending.
      assert Share.newest(%{new | interval: 1}, new) == new
    end
  end

  test "send/3: every wire form to the named process on each node, without connecting" do
    name = :"share_test_#{System.unique_integer([:positive])}"
    Process.register(self(), name)
    share = share(verdicts: verdicts())

    assert Share.send(share, name, [Node.self()]) == :ok
    assert_received {@tag_, 3, :droplets, _}
    assert_received {@tag_, 2, :droplets, _}

    # A node this one is not connected to: nothing is set up, nothing fails.
    assert Share.send(share, name, [:"nobody@10.255.255.1"]) == :ok
    refute :"nobody@10.255.255.1" in Node.list(:connected)
  end

  test "a verdict on the wire is a plain tuple of its fields" do
    [v | _] = verdicts()
    [{_, 3, _, %{verdicts: [wire | _]}}, _] = Share.encode(share(verdicts: [v]))
    assert wire == {v.id, v.name, v.status, v.address, v.stage, v.node, v.why}
    assert %Verdict{stage: :this_node} = v
  end
end
