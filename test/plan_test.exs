defmodule LibclusterDroplet.PlanTest do
  @moduledoc false
  # The pure decisions behind the cycle: selection, the desired set, probe
  # strikes, connect bookkeeping and the share protocol.
  use ExUnit.Case, async: true

  alias LibclusterDroplet.{Connector, Plan, Share}
  alias LibclusterDroplet.Plan.Selection

  doctest LibclusterDroplet.Plan
  doctest LibclusterDroplet.Connector
  doctest LibclusterDroplet.Share
  doctest LibclusterDroplet.Removal
  doctest LibclusterDroplet.HealthCheck

  @self :"app@10.0.0.1"

  describe "select/3" do
    test "names nodes basename@address, finds this node, drops unselected droplets" do
      droplets = [
        %{name: "web-1", address: "10.0.0.1"},
        %{name: "web-2", address: "10.0.0.2"},
        %{name: "web-3", address: nil},
        %{name: "web-2-again", address: "10.0.0.2"}
      ]

      assert %Selection{candidates: [{:"app@10.0.0.2", "10.0.0.2"}], self_listed?: true} =
               Plan.select(droplets, "app", @self)

      # Without a basename the droplet's name is the node's.
      assert %Selection{self_listed?: false, candidates: candidates} =
               Plan.select(droplets, nil, @self)

      assert Enum.map(candidates, &elem(&1, 0)) == [
               :"web-1@10.0.0.1",
               :"web-2@10.0.0.2",
               :"web-2-again@10.0.0.2"
             ]
    end

    test "unusable names are reported, not selected" do
      s = Plan.select([{"example.com", "10.0.0.5"}, {"ok", "not-an-ip"}], nil, @self)
      assert s.candidates == []

      assert s.unusable == [
               {"example.com", "example.com", "10.0.0.5", :invalid_basename},
               {"ok", "ok", "not-an-ip", :invalid_address}
             ]
    end
  end

  describe "filter/3" do
    @vpc_a "760e09ef-dc84-11e8-981e-3cfdfeaae000"
    @vpc_b "5a4981aa-9653-4bd1-bef5-d6bff52042e4"

    defp d(name, address, region, vpc),
      do: %{name: name, address: address, region: region, vpc_uuid: vpc}

    defp names(droplets), do: Enum.map(droplets, & &1.name)
    defp why(excluded), do: Enum.map(excluded, fn {d, reasons} -> {d.name, reasons} end)

    defp listing do
      [
        d("self", "10.0.0.1", "nyc3", @vpc_a),
        d("a-sfo", "10.0.0.2", "sfo3", @vpc_a),
        d("b-nyc", "10.0.1.3", "nyc3", @vpc_b),
        d("b-ams", "10.0.1.4", "ams3", @vpc_b),
        d("off", nil, nil, @vpc_a)
      ]
    end

    test "without regions or vpc every droplet is kept, uninspected" do
      # Not even a vpc_uuid is needed.
      listing = [%{name: "x", address: "10.0.0.9"}]
      assert Plan.filter(listing, %{regions: nil, vpc: nil}, @self) == {:ok, listing, []}
    end

    test "regions keep droplets in one of them; the others are outside, with their region" do
      assert {:ok, kept, excluded} =
               Plan.filter(listing(), %{regions: ["nyc3", "sfo3"], vpc: nil}, @self)

      assert names(kept) == ["self", "a-sfo", "b-nyc"]
      assert why(excluded) == [{"b-ams", [{:region, "ams3"}]}, {"off", [{:region, nil}]}]
    end

    test "a VPC's UUID keeps the droplets in it, compared in lower case" do
      listing = [d("upper", "10.0.0.5", "nyc3", String.upcase(@vpc_a)) | listing()]

      assert {:ok, kept, excluded} = Plan.filter(listing, %{regions: nil, vpc: @vpc_a}, @self)
      assert names(kept) == ["upper", "self", "a-sfo", "off"]
      assert why(excluded) == [{"b-nyc", [{:vpc, @vpc_b}]}, {"b-ams", [{:vpc, @vpc_b}]}]
    end

    test "vpc: :self is the VPC of the droplet at this node's address" do
      assert {:ok, kept, _} =
               Plan.filter(listing(), %{regions: nil, vpc: :self}, :"self@10.0.0.1")

      assert names(kept) == ["self", "a-sfo", "off"]

      # Whatever this node's basename: the address finds its droplet.
      assert {:ok, kept, _} = Plan.filter(listing(), %{regions: nil, vpc: :self}, :"app@10.0.1.4")
      assert names(kept) == ["b-nyc", "b-ams"]
    end

    test "a droplet outside both says so twice" do
      assert {:ok, ["self"], excluded} =
               listing()
               |> Plan.filter(%{regions: ["nyc3"], vpc: :self}, :"self@10.0.0.1")
               |> then(fn {:ok, kept, excluded} -> {:ok, names(kept), excluded} end)

      assert why(excluded) == [
               {"a-sfo", [{:region, "sfo3"}]},
               {"b-nyc", [{:vpc, @vpc_b}]},
               {"b-ams", [{:region, "ams3"}, {:vpc, @vpc_b}]},
               {"off", [{:region, nil}]}
             ]
    end

    test "droplets listed without vpc_uuid: the VPC cannot be told, the filter fails" do
      listing = [d("self", "10.0.0.1", "nyc3", nil), d("a", "10.0.0.2", "nyc3", @vpc_a)]

      for vpc <- [:self, @vpc_a] do
        assert Plan.filter(listing, %{regions: nil, vpc: vpc}, :"self@10.0.0.1") ==
                 {:error, {:vpc_unknown, "1 of the 2 listed droplets came without vpc_uuid"}}
      end

      # Without a VPC asked for, nothing needs it.
      assert {:ok, _, []} = Plan.filter(listing, %{regions: ["nyc3"], vpc: nil}, :"self@10.0.0.1")
    end

    test "vpc: :self with this node's droplet not listed, or listed in two VPCs, fails" do
      assert Plan.filter(listing(), %{regions: nil, vpc: :self}, :"self@10.0.0.99") ==
               {:error,
                {:vpc_unknown,
                 "this node's droplet (address 10.0.0.99) is not among the listed droplets, so its VPC is unknown"}}

      assert {:error, {:vpc_unknown, _}} =
               Plan.filter(listing(), %{regions: nil, vpc: :self}, :nonode@nohost)

      # Two VPCs may use the same private range.
      twin = d("twin", "10.0.0.1", "nyc3", @vpc_b)

      assert Plan.filter([twin | listing()], %{regions: nil, vpc: :self}, :"self@10.0.0.1") ==
               {:error,
                {:vpc_unknown,
                 "listed droplets in 2 different VPCs have this node's address 10.0.0.1"}}

      # The same droplet twice is one VPC.
      assert {:ok, _, _} =
               Plan.filter(
                 [hd(listing()) | listing()],
                 %{regions: nil, vpc: :self},
                 :"self@10.0.0.1"
               )
    end

    test "an empty listing with a UUID is fine; vpc_unknown is formatted naming the scope" do
      assert Plan.filter([], %{regions: ["nyc3"], vpc: @vpc_a}, @self) == {:ok, [], []}

      assert LibclusterDroplet.Error.format(
               {:vpc_unknown, "1 of the 2 listed droplets came without vpc_uuid"}
             ) =~
               "needs the token's vpc:read scope"
    end
  end

  describe "decide/5" do
    @a :"a@10.0.0.2"
    @b :"b@10.0.0.3"
    @selection %Selection{candidates: [{@a, "10.0.0.2"}, {@b, "10.0.0.3"}], self_listed?: true}

    test "without a health check every candidate is wanted" do
      assert {desired, %{}} = Plan.decide(@selection, :unchecked, MapSet.new(), %{}, true)
      assert Enum.sort(desired) == [@a, @b]
    end

    test "a new node needs one passing probe" do
      health = %{@a => :ok, @b => {:error, :timeout}}
      assert {desired, %{}} = Plan.decide(@selection, health, MapSet.new(), %{}, true)
      assert MapSet.to_list(desired) == [@a]
    end

    test "a managed node is dropped only on its third failed probe in a row" do
      failing = %{@a => {:error, :refused}, @b => :ok}
      managed = MapSet.new([@a, @b])

      {desired, strikes} = Plan.decide(@selection, failing, managed, %{}, true)
      assert @a in desired and strikes == %{@a => 1}
      {desired, strikes} = Plan.decide(@selection, failing, desired, strikes, true)
      assert @a in desired and strikes == %{@a => 2}
      {desired, strikes} = Plan.decide(@selection, failing, desired, strikes, true)
      refute @a in desired
      assert strikes == %{}
      assert Plan.probe_strikes() == 3
    end

    test "a passing probe resets the count" do
      managed = MapSet.new([@a])
      {_, strikes} = Plan.decide(@selection, %{@a => {:error, :timeout}}, managed, %{}, true)
      {_, strikes} = Plan.decide(@selection, %{@a => :ok}, managed, strikes, true)
      assert strikes == %{}
    end

    test "an unlisted node wants no one, unless it need not be listed" do
      unlisted = %{@selection | self_listed?: false}
      assert {desired, %{}} = Plan.decide(unlisted, :unchecked, MapSet.new([@a]), %{}, true)
      assert MapSet.size(desired) == 0
      assert {desired, _} = Plan.decide(unlisted, :unchecked, MapSet.new(), %{}, false)
      assert MapSet.size(desired) == 2
    end
  end

  describe "Connector" do
    defp backoff(n), do: 1_000 * n

    test "a failed node waits out its backoff; a success forgets its failures" do
      ref = make_ref()
      c = Connector.started(%Connector{}, :a, ref)
      assert {[], c} = Connector.next(c, [:a], MapSet.new(), 0)

      {:a, %{count: 1, retry_at: 1_000}, c} =
        Connector.finished(c, ref, {:error, false}, 0, &backoff/1)

      assert {[], _} = Connector.next(c, [:a], MapSet.new(), 999)
      assert {[:a], _} = Connector.next(c, [:a], MapSet.new(), 1_000)

      ref2 = make_ref()
      c = Connector.started(c, :a, ref2)

      {:a, %{count: 2, retry_at: 3_000}, c} =
        Connector.finished(c, ref2, {:error, false}, 1_000, &backoff/1)

      ref3 = make_ref()
      c = Connector.started(c, :a, ref3)
      {:a, nil, c} = Connector.finished(c, ref3, :ok, 3_000, &backoff/1)
      assert c.failures == %{}
    end

    test "at most 64 in flight; retries never take the room of fresh nodes" do
      failed = for i <- 1..100, do: :"failed-#{i}@h"

      c = %Connector{
        failures: Map.new(failed, &{&1, %{count: 1, retry_at: 0, reason: false}})
      }

      fresh = for i <- 1..100, do: :"fresh-#{i}@h"
      {start, _} = Connector.next(c, failed ++ fresh, MapSet.new(), 0)
      assert start == Enum.take(fresh, Connector.max_in_flight())

      # Room left after fresh nodes goes to retries, at most 32 of them in flight.
      {start, _} = Connector.next(c, failed ++ Enum.take(fresh, 10), MapSet.new(), 0)
      assert Enum.count(start, &(&1 in fresh)) == 10
      assert Enum.count(start, &(&1 in failed)) == 32

      busy = Enum.reduce(Enum.take(fresh, 60), c, &Connector.started(&2, &1, make_ref()))

      {start, _} = Connector.next(busy, failed ++ Enum.drop(fresh, 60), MapSet.new(), 0)
      assert start == fresh |> Enum.drop(60) |> Enum.take(4)

      {start, _} = Connector.next(c, failed, MapSet.new(), 0)
      assert length(start) == 32
    end

    test "an unknown ref is ignored" do
      assert {nil, nil, %Connector{}} =
               Connector.finished(%Connector{}, make_ref(), :ok, 0, &backoff/1)
    end
  end

  describe "Removal" do
    alias LibclusterDroplet.Removal

    test "a node asked to leave is asked again after the grace, then disconnected, and only if still there" do
      {[{:ask_to_leave, :a}], removing} =
        Removal.start(%{}, [:a], MapSet.new([:a]), MapSet.new([:a]), MapSet.new(), 0)

      grace = Removal.leave_grace()
      assert Removal.asks() == 2
      assert Removal.next_check(removing, 0, 100) == grace
      assert {[], ^removing} = Removal.due(removing, MapSet.new([:a]), grace - 1)
      assert {[{:ask_to_leave, :a}], removing} = Removal.due(removing, MapSet.new([:a]), grace)
      assert {[], _} = Removal.due(removing, MapSet.new([:a]), 2 * grace - 1)
      assert {[{:disconnect, :a, true}], _} = Removal.due(removing, MapSet.new([:a]), 2 * grace)
      # It left by itself: nothing to do, nothing left.
      assert {[], %{}} = Removal.due(removing, MapSet.new(), 2 * grace)
    end

    test "a failed disconnect is kept and retried at the next check" do
      {[{:disconnect, :b, false}], removing} =
        Removal.start(%{}, [:b], MapSet.new(), MapSet.new([:b]), MapSet.new(), 0)

      removing = Removal.disconnected(removing, :b, :error)
      assert Removal.next_check(removing, 10, 250) == 250
      assert {[{:disconnect, :b, false}], _} = Removal.due(removing, MapSet.new([:b]), 10)
      assert Removal.disconnected(removing, :b, :ok) == %{}
      assert Removal.next_check(%{}, 0, 250) == nil
    end

    test "a node wanted again is no longer removed" do
      {_, removing} =
        Removal.start(%{}, [:a], MapSet.new([:a]), MapSet.new([:a]), MapSet.new(), 0)

      assert {[], %{}} =
               Removal.start(removing, [], MapSet.new(), MapSet.new(), MapSet.new([:a]), 1)
    end
  end

  describe "Share" do
    test "views order by listing time, then by poll count" do
      assert Share.newer?({2, 0}, {1, 9})
      assert Share.newer?({1, 2}, {1, 1})
      refute Share.newer?({1, 1}, {1, 1})
      refute Share.newer?({0, 9}, {1, 0})
      assert Share.newer?({0, 0}, nil)
    end

    test "only version 2 of the right shape decodes" do
      good = %Share{
        topology: :t,
        from: :a@h,
        fingerprint: 1,
        interval: 100,
        seq: 1,
        listed_at: 5,
        droplets: [{"a", "10.0.0.2"}]
      }

      assert {:ok, ^good} = good |> Share.encode() |> Share.decode()
      {tag, 2, :t, payload} = Share.encode(good)

      for bad <- [
            %{payload | interval: 0},
            %{payload | seq: -1},
            %{payload | droplets: [{"a", nil}]},
            %{payload | from: "a@h"},
            Map.delete(payload, :listed_at),
            Map.delete(payload, :from)
          ] do
        assert Share.decode({tag, 2, :t, bad}) == {:error, :malformed}
      end

      assert Share.decode({tag, 3, :t, payload}) == {:error, {:unsupported_version, 3}}
      assert Share.decode({tag}) == {:error, :malformed}
      assert Share.decode({tag, :t, :b@h, 1, []}) == {:error, {:unsupported_version, 1}}
      assert Share.decode({tag, "2", :t, payload}) == {:error, :malformed}
      assert Share.sender({tag, 3, :t, payload}) == :a@h
      assert Share.sender({tag, :t, :b@h, 1, []}) == :b@h
      assert Share.share?({tag, 1})
      refute Share.share?({:other, 1})
    end
  end
end
