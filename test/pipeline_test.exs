defmodule LibclusterDroplet.PipelineTest do
  @moduledoc false
  # The one pipeline from a listing or a share to a verdict per droplet,
  # and the client-side filters it applies.
  use ExUnit.Case, async: true

  alias LibclusterDroplet.{Filters, Pipeline, Share, Verdict}

  doctest LibclusterDroplet.Pipeline
  doctest LibclusterDroplet.Filters

  @self :"app@10.0.0.1"
  @vpc_a "760e09ef-dc84-11e8-981e-3cfdfeaae000"
  @vpc_b "5a4981aa-9653-4bd1-bef5-d6bff52042e4"

  defp d(name, address, opts \\ []) do
    Map.merge(
      %{id: nil, name: name, status: :active, address: address, region: "nyc3", vpc_uuid: @vpc_a},
      Map.new(opts)
    )
  end

  defp verdicts(droplets, config \\ %{}, self \\ @self) do
    assert {:ok, verdicts} = Pipeline.from_listing(droplets, config, self)
    verdicts
  end

  defp stages(verdicts), do: Enum.map(verdicts, &{&1.name, &1.stage})

  describe "from_listing/3: one verdict per droplet, in listing order" do
    test "each stage" do
      droplets = [
        d("far", "10.0.0.9", region: "ams3"),
        d("off", nil, status: :off),
        d("archived", nil, status: "archive"),
        d("no-address", nil),
        d("example.com", "10.0.0.5"),
        d("bad-address", "not-an-ip"),
        d("self", "10.0.0.1"),
        d("web-2", "10.0.0.2"),
        d("web-2", "10.0.0.2")
      ]

      verdicts = verdicts(droplets, %{regions: ["nyc3"]}, :"self@10.0.0.1")

      assert stages(verdicts) == [
               {"far", :outside_filters},
               {"off", :not_active},
               {"archived", :not_active},
               {"no-address", :no_address},
               {"example.com", :unusable_name},
               {"bad-address", :unusable_name},
               {"self", :this_node},
               {"web-2", :selected},
               {"web-2", :duplicate}
             ]

      assert Enum.map(verdicts, & &1.why) == [
               [regions: "ams3"],
               nil,
               nil,
               nil,
               {:invalid_basename, "example.com"},
               {:invalid_address, "bad-address"},
               nil,
               nil,
               nil
             ]

      assert Enum.map(verdicts, & &1.node) ==
               [
                 nil,
                 nil,
                 nil,
                 nil,
                 nil,
                 nil,
                 :"self@10.0.0.1",
                 :"web-2@10.0.0.2",
                 :"web-2@10.0.0.2"
               ]

      assert Enum.all?(verdicts, &(&1.health == nil))
      assert Enum.all?(verdicts, &(&1.stage in Verdict.stages()))
    end

    test "the droplet's fields are kept: id, name, status, address" do
      [v] = verdicts([d("web-2", "10.0.0.2", id: 42)])

      assert %Verdict{id: 42, name: "web-2", status: :active, address: "10.0.0.2"} = v
      assert v.node == :"web-2@10.0.0.2"
    end

    test "the stages come in order: filters, then status, then address, then name" do
      # Outside the filters whatever else is wrong with it.
      assert [{_, :outside_filters}] =
               stages(
                 verdicts([d("x.y", nil, status: :off, region: "ams3")], %{regions: ["nyc3"]})
               )

      assert [{_, :not_active}] = stages(verdicts([d("x.y", nil, status: :off)]))
      assert [{_, :no_address}] = stages(verdicts([d("x.y", nil)]))
      assert [{_, :unusable_name}] = stages(verdicts([d("x.y", "10.0.0.3")]))
    end

    test ":node_basename names every node; a bad droplet name no longer matters" do
      verdicts =
        verdicts([d("example.com", "10.0.0.5"), d("web 2", "10.0.0.2")], %{node_basename: "app"})

      assert Enum.map(verdicts, &{&1.stage, &1.node}) == [
               selected: :"app@10.0.0.5",
               selected: :"app@10.0.0.2"
             ]
    end

    test "duplicates: the first in listing order keeps the node name, whatever the names' order" do
      droplets = [d("web-b", "10.0.0.3"), d("web-a", "10.0.0.3"), d("web-c", "10.0.0.3")]
      verdicts = verdicts(droplets, %{node_basename: "app"})

      assert stages(verdicts) == [
               {"web-b", :selected},
               {"web-a", :duplicate},
               {"web-c", :duplicate}
             ]

      assert Pipeline.targets(verdicts) == [{:"app@10.0.0.3", "10.0.0.3"}]

      # This node's own name: the first is this node, a later one a duplicate.
      droplets = [d("web-b", "10.0.0.1"), d("web-a", "10.0.0.1")]

      assert stages(verdicts(droplets, %{node_basename: "app"})) == [
               {"web-b", :this_node},
               {"web-a", :duplicate}
             ]
    end

    test "a droplet left out earlier takes no node name: the later one is selected" do
      droplets = [
        d("far", "10.0.0.3", region: "ams3"),
        d("off", "10.0.0.3", status: :off),
        d("web", "10.0.0.3")
      ]

      assert stages(verdicts(droplets, %{regions: ["nyc3"], node_basename: "app"})) == [
               {"far", :outside_filters},
               {"off", :not_active},
               {"web", :selected}
             ]
    end

    test "this node: by its full name, not its address alone" do
      verdicts = verdicts([d("web", "10.0.0.1")], %{}, :"other@10.0.0.1")
      assert stages(verdicts) == [{"web", :selected}]
      refute Pipeline.self_listed?(verdicts)

      verdicts = verdicts([d("web", "10.0.0.1")], %{}, :"web@10.0.0.1")
      assert stages(verdicts) == [{"web", :this_node}]
      assert Pipeline.self_listed?(verdicts)
    end

    test "self nil (a machine that is no node): nothing is this node" do
      verdicts = verdicts([d("app", "10.0.0.1"), d("web", "10.0.0.2")], %{}, nil)
      assert stages(verdicts) == [{"app", :selected}, {"web", :selected}]
    end

    test "a filter that cannot be applied fails the whole listing" do
      droplets = [d("self", "10.0.0.1", vpc_uuid: nil), d("a", "10.0.0.2")]

      assert Pipeline.from_listing(droplets, %{vpc: @vpc_a}, @self) ==
               {:error, {:vpc_unknown, "1 of the 2 listed droplets came without vpc_uuid"}}
    end

    test "an empty listing" do
      assert Pipeline.from_listing([], %{regions: ["nyc3"], vpc: :self}, nil) == {:ok, []}
    end
  end

  describe "targets/1, self_listed?/1, own_name/2" do
    test "targets: the selected nodes with their addresses, in listing order" do
      verdicts =
        verdicts(
          [d("c", "10.0.0.4"), d("a", "10.0.0.2"), d("self", "10.0.0.1")],
          %{},
          :"self@10.0.0.1"
        )

      assert Pipeline.targets(verdicts) == [
               {:"c@10.0.0.4", "10.0.0.4"},
               {:"a@10.0.0.2", "10.0.0.2"}
             ]
    end

    test "own_name: the node name this node's droplet gets, found by this node's address" do
      droplets = [d("web-3", "10.0.0.3"), d("web-2", "10.0.0.2"), d("web-4", "10.0.0.4")]
      verdicts = verdicts(droplets, %{node_basename: "app"}, :"wrong@10.0.0.2")

      assert Pipeline.own_name(verdicts, :"wrong@10.0.0.2") == :"app@10.0.0.2"
      assert Pipeline.own_name(verdicts, :"app@10.0.0.4") == :"app@10.0.0.4"
      assert Pipeline.own_name(verdicts, :"wrong@10.0.0.9") == nil
      assert Pipeline.own_name(verdicts, :nonode@nohost) == nil
    end

    test "own_name: a droplet at that address that gives no node (filtered out, a duplicate) names none" do
      droplets = [
        d("far", "10.0.0.2", region: "ams3"),
        d("first", "10.0.0.3"),
        d("dup", "10.0.0.3")
      ]

      verdicts = verdicts(droplets, %{regions: ["nyc3"], node_basename: "app"})
      assert Pipeline.own_name(verdicts, :"x@10.0.0.2") == nil
      # The duplicate's name is the first's: that is the name.
      assert Pipeline.own_name(verdicts, :"x@10.0.0.3") == :"app@10.0.0.3"
    end
  end

  describe "with_results/2 and with_health/2" do
    setup do
      verdicts =
        verdicts([d("a", "10.0.0.2"), d("off", nil, status: :off), d("b", "10.0.0.3")], %{
          node_basename: "app"
        })

      {:ok, verdicts: verdicts}
    end

    test "the NIF's results, in target order, into the selected verdicts", %{verdicts: verdicts} do
      results = [{"10.0.0.2", {:ok, 120}}, {"10.0.0.3", {:error, :refused}}]

      assert Enum.map(Pipeline.with_results(verdicts, results), &{&1.name, &1.health}) == [
               {"a", :ok},
               {"off", nil},
               {"b", {:error, :refused}}
             ]
    end

    test "unchecked: every selected node passes", %{verdicts: verdicts} do
      assert Enum.map(Pipeline.with_results(verdicts, :unchecked), & &1.health) == [:ok, nil, :ok]
      assert Enum.map(Pipeline.with_health(verdicts, :unchecked), & &1.health) == [:ok, nil, :ok]
    end

    test "a node without a result has no health", %{verdicts: verdicts} do
      health = %{:"app@10.0.0.3" => {:error, :timeout}}

      assert Enum.map(Pipeline.with_health(verdicts, health), & &1.health) ==
               [nil, nil, {:error, :timeout}]

      # Stages never change.
      assert stages(Pipeline.with_health(verdicts, health)) == stages(verdicts)
    end
  end

  describe "from_share/3" do
    defp share(verdicts),
      do: %Share{
        topology: :t,
        from: :"app@10.0.0.2",
        fingerprint: 1,
        interval: 5_000,
        seq: 1,
        listed_at: 1,
        verdicts: verdicts
      }

    test "the leader's own droplet is a node to connect to here, and this node's droplet is this node" do
      droplets = [
        d("leader", "10.0.0.2"),
        d("follower", "10.0.0.3"),
        d("other", "10.0.0.4"),
        d("far", "10.0.0.5", region: "ams3"),
        d("off", nil, status: :off),
        d("dup", "10.0.0.4")
      ]

      config = %{regions: ["nyc3"], node_basename: "app"}

      leader =
        verdicts(droplets, config, :"app@10.0.0.2")
        |> Pipeline.with_health(%{:"app@10.0.0.3" => :ok, :"app@10.0.0.4" => {:error, :refused}})

      follower = Pipeline.from_share(share(leader), "app", :"app@10.0.0.3")

      assert stages(follower) == [
               {"leader", :selected},
               {"follower", :this_node},
               {"other", :selected},
               {"far", :outside_filters},
               {"off", :not_active},
               {"dup", :duplicate}
             ]

      # What this node decides from the share is what its own listing would give.
      {:ok, own} = Pipeline.from_listing(droplets, config, :"app@10.0.0.3")
      assert follower == own
      # The leader's checks are its own: this node checks again.
      assert Enum.all?(follower, &(&1.health == nil))
      assert Enum.at(follower, 3).why == [regions: "ams3"]
    end

    test "a node that is in none of the share's droplets: every node is selected" do
      leader = verdicts([d("a", "10.0.0.2"), d("b", "10.0.0.3")], %{}, :"a@10.0.0.2")
      follower = Pipeline.from_share(share(leader), nil, :"c@10.0.0.9")
      assert stages(follower) == [{"a", :selected}, {"b", :selected}]
      refute Pipeline.self_listed?(follower)
    end

    test "a version 2 share (droplets with addresses) is named here with this node's basename" do
      v2 = %{
        share(nil)
        | version: 2,
          droplets: [{"web-1", "10.0.0.2"}, {"web-2", "10.0.0.3"}, {"x.y", "10.0.0.4"}]
      }

      assert Enum.map(Pipeline.from_share(v2, "app", :"app@10.0.0.3"), &{&1.stage, &1.node}) == [
               selected: :"app@10.0.0.2",
               this_node: :"app@10.0.0.3",
               selected: :"app@10.0.0.4"
             ]

      # Without a basename, the droplets' names; one that makes no node name is unusable.
      assert Enum.map(Pipeline.from_share(v2, nil, :"web-1@10.0.0.2"), &{&1.stage, &1.node}) == [
               this_node: :"web-1@10.0.0.2",
               selected: :"web-2@10.0.0.3",
               unusable_name: nil
             ]
    end
  end

  describe "Filters" do
    defp split(droplets, config, self \\ @self) do
      assert {:ok, split} = Filters.apply(droplets, config, self)
      Enum.map(split, fn {droplet, outside} -> {droplet.name, outside} end)
    end

    defp listing do
      [
        d("self", "10.0.0.1", region: "nyc3", vpc_uuid: @vpc_a),
        d("a-sfo", "10.0.0.2", region: "sfo3", vpc_uuid: @vpc_a),
        d("b-nyc", "10.0.1.3", region: "nyc3", vpc_uuid: @vpc_b),
        d("b-ams", "10.0.1.4", region: "ams3", vpc_uuid: @vpc_b),
        d("off", nil, region: nil, vpc_uuid: @vpc_a)
      ]
    end

    test "no filter set: every droplet kept, not even a vpc_uuid needed" do
      listing = [%{name: "x", address: "10.0.0.9"}]

      assert Filters.apply(listing, %{regions: nil, vpc: nil}, @self) ==
               {:ok, [{hd(listing), []}]}

      assert Filters.apply(listing, %{}, nil) == {:ok, [{hd(listing), []}]}
    end

    test "regions keep droplets in one of them; the others are outside, with their region" do
      assert split(listing(), %{regions: ["nyc3", "sfo3"]}) == [
               {"self", []},
               {"a-sfo", []},
               {"b-nyc", []},
               {"b-ams", [regions: "ams3"]},
               {"off", [regions: nil]}
             ]
    end

    test "a VPC's UUID keeps the droplets in it, compared in lower case" do
      listing = [d("upper", "10.0.0.5", vpc_uuid: String.upcase(@vpc_a)) | listing()]

      assert split(listing, %{vpc: @vpc_a}) == [
               {"upper", []},
               {"self", []},
               {"a-sfo", []},
               {"b-nyc", [vpc: @vpc_b]},
               {"b-ams", [vpc: @vpc_b]},
               {"off", []}
             ]
    end

    test "vpc: :self is the VPC of the droplet at this node's address, whatever its basename" do
      assert split(listing(), %{vpc: :self}, :"self@10.0.0.1")
             |> Enum.filter(&(elem(&1, 1) == []))
             |> Enum.map(&elem(&1, 0)) ==
               ["self", "a-sfo", "off"]

      assert split(listing(), %{vpc: :self}, :"anything@10.0.1.4")
             |> Enum.filter(&(elem(&1, 1) == []))
             |> Enum.map(&elem(&1, 0)) ==
               ["b-nyc", "b-ams"]

      # Its droplet's VPC in upper case is the same VPC.
      upper = [
        d("self", "10.0.0.1", vpc_uuid: String.upcase(@vpc_b)),
        d("b", "10.0.0.2", vpc_uuid: @vpc_b)
      ]

      assert split(upper, %{vpc: :self}) == [{"self", []}, {"b", []}]
    end

    test "a droplet outside both says so for each, in the filters' order" do
      assert split(listing(), %{regions: ["nyc3"], vpc: :self}, :"self@10.0.0.1") == [
               {"self", []},
               {"a-sfo", [regions: "sfo3"]},
               {"b-nyc", [vpc: @vpc_b]},
               {"b-ams", [regions: "ams3", vpc: @vpc_b]},
               {"off", [regions: nil]}
             ]
    end

    test "droplets listed without vpc_uuid: the VPC cannot be told, the filter fails" do
      listing = [
        d("self", "10.0.0.1", vpc_uuid: nil),
        d("a", "10.0.0.2"),
        Map.delete(d("b", "10.0.0.3"), :vpc_uuid)
      ]

      for vpc <- [:self, @vpc_a] do
        assert Filters.apply(listing, %{vpc: vpc}, :"self@10.0.0.1") ==
                 {:error, {:vpc_unknown, "2 of the 3 listed droplets came without vpc_uuid"}}
      end

      # Offline too: the listing itself cannot be filtered.
      assert {:error, {:vpc_unknown, _}} = Filters.apply(listing, %{vpc: :self}, nil)
      # Without a VPC asked for, nothing needs it.
      assert {:ok, _} = Filters.apply(listing, %{regions: ["nyc3"], vpc: nil}, :"self@10.0.0.1")
    end

    test "with :autoscale_pool, a member whose droplet was not listed lacks no vpc_uuid: it is not listed" do
      pool = %{id: "p1", name: "web", tags: [], members: []}
      member = fn id, status -> %{droplet_id: id, status: status, health_status: "healthy"} end
      listed = [d("self", "10.0.0.1", id: 1), d("b", "10.0.0.2", id: 2)]

      # Droplet 3 is being created, droplet 4 torn down: pool members, not listed.
      members = [member.(1, "active"), member.(2, "active"), member.(3, "active")]
      members = members ++ [member.(4, "deleting")]
      nif = %{droplets: listed, total: 2, pool: %{pool | members: members}}
      {:ok, listing} = LibclusterDroplet.Listing.from_nif({:ok, nif}, %{})

      for vpc <- [:self, @vpc_a] do
        config = %{autoscale_pool: "web", vpc: vpc, regions: ["nyc3"], node_basename: "app"}

        assert stages(verdicts(listing.droplets, config)) == [
                 {"self", :this_node},
                 {"b", :selected},
                 {"droplet 3", :not_active},
                 {"droplet 4", :outside_filters}
               ]

        assert List.last(verdicts(listing.droplets, config)).why == [
                 autoscale_pool: member.(4, "deleting")
               ]
      end

      # A listed droplet without vpc_uuid still fails the filter.
      nif = %{nif | droplets: [d("c", "10.0.0.3", id: 5, vpc_uuid: nil) | listed]}
      {:ok, listing} = LibclusterDroplet.Listing.from_nif({:ok, nif}, %{})

      assert Filters.apply(listing.droplets, %{autoscale_pool: "web", vpc: @vpc_a}, @self) ==
               {:error, {:vpc_unknown, "1 of the 3 listed droplets came without vpc_uuid"}}
    end

    test "a filter withheld (it held the token) keeps no droplet, needs nothing of the listing, says why in words" do
      member = %{droplet_id: 1, status: "active", health_status: "healthy"}
      # No vpc_uuid on the first: a withheld :vpc asks for none.
      listing = [Map.delete(d("self", "10.0.0.1"), :vpc_uuid) | listing()]
      listing = Enum.map(listing, &Map.put(&1, :pool, member))

      for config <- [
            %{regions: :withheld},
            %{vpc: :withheld},
            %{autoscale_pool: :withheld},
            %{autoscale_pool: "web", pool_health: :withheld}
          ] do
        verdicts = verdicts(listing, Map.put(config, :node_basename, "app"))
        assert Enum.all?(verdicts, &(&1.stage == :outside_filters)), inspect(config)
        for v <- verdicts, outside <- v.why, do: assert(is_binary(Filters.describe(outside)))
        assert Filters.set(config) |> Keyword.values() |> Enum.member?(:withheld)
      end
    end

    test "vpc: :self with this node's droplet not listed, or listed in two VPCs, fails" do
      assert Filters.apply(listing(), %{vpc: :self}, :"self@10.0.0.99") ==
               {:error,
                {:vpc_unknown,
                 "this node's droplet (address 10.0.0.99) is not among the listed droplets, so its VPC is unknown"}}

      assert {:error, {:vpc_unknown, _}} = Filters.apply(listing(), %{vpc: :self}, :nonode@nohost)

      # Two VPCs may use the same private range.
      twin = d("twin", "10.0.0.1", vpc_uuid: @vpc_b)

      assert Filters.apply([twin | listing()], %{vpc: :self}, :"self@10.0.0.1") ==
               {:error,
                {:vpc_unknown,
                 "listed droplets in 2 different VPCs have this node's address 10.0.0.1"}}

      # The same droplet twice is one VPC.
      assert {:ok, _} =
               Filters.apply([hd(listing()) | listing()], %{vpc: :self}, :"self@10.0.0.1")
    end

    test "self nil (a machine that is no node): vpc: :self is not applied, the other filters are" do
      assert split(listing(), %{vpc: :self, regions: ["nyc3"]}, nil) == [
               {"self", []},
               {"a-sfo", [regions: "sfo3"]},
               {"b-nyc", []},
               {"b-ams", [regions: "ams3"]},
               {"off", [regions: nil]}
             ]

      # A UUID needs no node.
      assert split(listing(), %{vpc: @vpc_b}, nil) |> Enum.count(&(elem(&1, 1) == [])) == 2
    end

    test "an empty listing with a UUID is fine" do
      assert Filters.apply([], %{regions: ["nyc3"], vpc: @vpc_a}, @self) == {:ok, []}
    end

    test "set/1: the filters set, sorted by option, values normalized" do
      assert Filters.set(%{vpc: :self, regions: ["sfo3", "nyc3"], tag_name: "web"}) ==
               [regions: ["nyc3", "sfo3"], vpc: :self]

      assert Filters.set(%{regions: nil, vpc: nil}) == []
      assert Filters.set(%{}) == []
      assert Filters.set(%{vpc: @vpc_a}) == [vpc: @vpc_a]
      assert Filters.options() == Enum.sort(Filters.options())
    end

    test "the declarations: options, the droplet fields they read, their schema" do
      assert Filters.options() == [:autoscale_pool, :pool_health, :regions, :vpc]
      assert Filters.fields() == []
      assert Keyword.keys(Filters.schema()) == Filters.options()

      for {_option, spec} <- Filters.schema() do
        assert spec[:default] == nil
        assert is_binary(spec[:doc]) and is_binary(spec[:type_doc])
      end
    end

    test "describe/1: why a droplet is outside, in words" do
      assert Filters.describe({:regions, "sfo3"}) == "region sfo3 is not among :regions"
      assert Filters.describe({:regions, nil}) == "no region, and :regions is set"
      assert Filters.describe({:vpc, @vpc_b}) == "VPC #{@vpc_b} is not the :vpc asked for"
      assert Filters.describe({:vpc, nil}) == "no VPC, and :vpc is set"
    end
  end

  describe "Log: once-only warnings about verdicts" do
    import ExUnit.CaptureLog
    alias LibclusterDroplet.Log

    test "an unusable name is warned about once while it is listed, and forgotten once it is not" do
      verdicts = verdicts([d("example.com", "10.0.0.5"), d("web", "10.0.0.6")])
      t = :"pipeline_log_#{System.unique_integer([:positive])}"

      {warned, log} = with_log(fn -> Log.unusable(MapSet.new(), t, verdicts) end)

      assert log =~
               ~s([libcluster:#{t}] skipping droplet "example.com": "example.com" cannot be the name part)

      assert MapSet.to_list(warned) == [{:name, "example.com"}]

      # Other tests may log meanwhile: only this one's line counts.
      refute capture_log(fn -> assert Log.unusable(warned, t, verdicts) == warned end) =~
               "[libcluster:#{t}]"

      # Kept while the droplet is listed, forgotten once it is not.
      assert Log.prune(warned, verdicts) == warned
      assert Log.prune(warned, verdicts([d("web", "10.0.0.6")])) == MapSet.new()
    end

    test "a share's sender is forgotten once it is not connected" do
      warned = Log.once(MapSet.new(), :t, {:share, :"gone@10.0.0.9", :malformed}, fn -> "w" end)
      assert MapSet.size(warned) == 1
      assert Log.prune(warned, []) == MapSet.new()
    end
  end
end
