defmodule LibclusterDroplet.PlanTest do
  @moduledoc false
  # The pure decisions behind the cycle: the desired set and probe
  # strikes (Plan), connect bookkeeping (Connector), removing nodes
  # without cutting anyone off (Removal), and the health check's kinds.
  use ExUnit.Case, async: true

  alias LibclusterDroplet.{Connector, HealthCheck, Plan, Removal}

  doctest LibclusterDroplet.Plan
  doctest LibclusterDroplet.Connector
  doctest LibclusterDroplet.Removal
  doctest LibclusterDroplet.HealthCheck

  describe "Plan.decide/5" do
    @a :"a@10.0.0.2"
    @b :"b@10.0.0.3"
    @targets [@a, @b]

    test "without a health check every target is wanted" do
      assert {desired, %{}} = Plan.decide(@targets, :unchecked, MapSet.new(), %{}, false)
      assert Enum.sort(desired) == [@a, @b]
    end

    test "a new node needs one passing check; one without a result is not checked" do
      health = %{@a => :ok, @b => {:error, :timeout}}
      assert {desired, %{}} = Plan.decide(@targets, health, MapSet.new(), %{}, false)
      assert MapSet.to_list(desired) == [@a]

      assert {desired, %{}} = Plan.decide(@targets, %{@a => :ok}, MapSet.new(), %{}, false)
      assert MapSet.to_list(desired) == [@a]
    end

    test "a managed node is dropped only on its third failed check in a row" do
      failing = %{@a => {:error, :refused}, @b => :ok}
      managed = MapSet.new([@a, @b])

      {desired, strikes} = Plan.decide(@targets, failing, managed, %{}, false)
      assert @a in desired and strikes == %{@a => 1}
      {desired, strikes} = Plan.decide(@targets, failing, desired, strikes, false)
      assert @a in desired and strikes == %{@a => 2}
      {desired, strikes} = Plan.decide(@targets, failing, desired, strikes, false)
      refute @a in desired
      assert @b in desired
      assert strikes == %{}
      assert Plan.probe_strikes() == 3
    end

    test "a passing check resets the count; strikes of nodes no longer targets are forgotten" do
      managed = MapSet.new([@a])
      {_, strikes} = Plan.decide(@targets, %{@a => {:error, :timeout}}, managed, %{}, false)
      assert strikes == %{@a => 1}
      {_, strikes} = Plan.decide(@targets, %{@a => :ok}, managed, strikes, false)
      assert strikes == %{}

      {_, strikes} = Plan.decide([@b], %{@b => :ok}, managed, %{@a => 2}, false)
      assert strikes == %{}
    end

    test "a node that must be listed and is not wants no one" do
      assert {desired, %{}} =
               Plan.decide(@targets, :unchecked, MapSet.new([@a]), %{@a => 1}, true)

      assert MapSet.size(desired) == 0
      assert {desired, %{}} = Plan.decide(@targets, %{@a => :ok}, MapSet.new([@a]), %{}, true)
      assert MapSet.size(desired) == 0
    end
  end

  describe "Connector" do
    defp backoff(n), do: 1_000 * n

    test "a failed node waits out its backoff; a success forgets its failures" do
      ref = make_ref()
      c = Connector.started(%Connector{}, :a, ref, self(), 30_000)
      assert {[], c} = Connector.next(c, [:a], MapSet.new(), 0)
      assert Connector.in_flight?(c, ref)

      {:a, %{count: 1, retry_at: 1_000, reason: false}, c} =
        Connector.finished(c, ref, {:error, false}, 0, &backoff/1)

      refute Connector.in_flight?(c, ref)
      assert {[], _} = Connector.next(c, [:a], MapSet.new(), 999)
      assert {[:a], _} = Connector.next(c, [:a], MapSet.new(), 1_000)

      ref2 = make_ref()
      c = Connector.started(c, :a, ref2, self(), 31_000)

      {:a, %{count: 2, retry_at: 3_000}, c} =
        Connector.finished(c, ref2, {:error, :not_connected}, 1_000, &backoff/1)

      ref3 = make_ref()
      c = Connector.started(c, :a, ref3, self(), 33_000)
      {:a, nil, c} = Connector.finished(c, ref3, :ok, 3_000, &backoff/1)
      assert c.failures == %{}
      assert c.in_flight == %{}
    end

    test "connected nodes are not started" do
      assert {[:b], _} = Connector.next(%Connector{}, [:a, :b], MapSet.new([:a]), 0)
    end

    test "at most 64 in flight; retries never take the room of fresh nodes" do
      failed = for i <- 1..100, do: :"failed-#{i}@h"
      c = %Connector{failures: Map.new(failed, &{&1, %{count: 1, retry_at: 0, reason: false}})}
      fresh = for i <- 1..100, do: :"fresh-#{i}@h"
      {start, _} = Connector.next(c, failed ++ fresh, MapSet.new(), 0)
      assert start == Enum.take(fresh, Connector.max_in_flight())
      assert Connector.max_in_flight() == 64

      # Room left after fresh nodes goes to retries, at most 32 of them in flight.
      {start, _} = Connector.next(c, failed ++ Enum.take(fresh, 10), MapSet.new(), 0)
      assert Enum.count(start, &(&1 in fresh)) == 10
      assert Enum.count(start, &(&1 in failed)) == 32

      busy =
        Enum.reduce(Enum.take(fresh, 60), c, &Connector.started(&2, &1, make_ref(), self(), 0))

      {start, _} = Connector.next(busy, failed ++ Enum.drop(fresh, 60), MapSet.new(), 0)
      assert start == fresh |> Enum.drop(60) |> Enum.take(4)

      # Retries in flight count against their own bound.
      retrying =
        Enum.reduce(Enum.take(failed, 30), c, &Connector.started(&2, &1, make_ref(), self(), 0))

      {start, _} = Connector.next(retrying, Enum.drop(failed, 30), MapSet.new(), 0)
      assert length(start) == 2
    end

    test "deadlines: expired/2 hands back the connects past theirs, next_deadline/1 the earliest" do
      assert Connector.next_deadline(%Connector{}) == nil
      assert Connector.expired(%Connector{}, 1_000_000) == []

      {r1, r2, r3} = {make_ref(), make_ref(), make_ref()}
      p2 = spawn(fn -> :ok end)

      c =
        %Connector{}
        |> Connector.started(:a, r1, self(), 5_000)
        |> Connector.started(:b, r2, p2, 2_000)
        |> Connector.started(:c, r3, self(), 9_000)

      assert Connector.next_deadline(c) == 2_000
      assert Connector.expired(c, 1_999) == []
      assert Connector.expired(c, 2_000) == [{r2, p2}]
      assert Enum.sort(Connector.expired(c, 5_000)) == Enum.sort([{r1, self()}, {r2, p2}])
      assert Enum.sort(Connector.nodes(c)) == [:a, :b, :c]

      # A connect given up is finished as a timeout, with its backoff.
      {:b, %{count: 1, reason: :timeout, retry_at: 3_000}, c} =
        Connector.finished(c, r2, {:error, :timeout}, 2_000, &backoff/1)

      assert Connector.next_deadline(c) == 5_000
      assert Enum.sort(Connector.nodes(c)) == [:a, :c]
    end

    test "forget/2: nodes no longer wanted, their failures and their connects in flight, as {ref, node}" do
      {r1, r2} = {make_ref(), make_ref()}

      c =
        %Connector{
          failures: %{
            gone: %{count: 1, retry_at: 0, reason: false},
            kept: %{count: 2, retry_at: 0, reason: false}
          }
        }
        |> Connector.started(:gone, r1, self(), 0)
        |> Connector.started(:kept, r2, self(), 0)

      {cancel, c} = Connector.forget(c, MapSet.new([:kept]))
      assert cancel == [{r1, :gone}]
      assert Connector.nodes(c) == [:kept]
      assert Map.keys(c.failures) == [:kept]
      assert {[], ^c} = Connector.forget(c, MapSet.new([:kept]))
    end

    test "an unknown ref is ignored" do
      assert {nil, nil, %Connector{}} =
               Connector.finished(%Connector{}, make_ref(), :ok, 0, &backoff/1)
    end
  end

  describe "Removal" do
    @retry 250

    # Checks `node` still connected at each due time until `until`, as the
    # strategy does: the actions taken and the waits between requests.
    defp run(removing, visible, connected, until) do
      Stream.unfold({removing, 0, []}, fn
        {_removing, now, _actions} when now > until ->
          nil

        {removing, now, actions} ->
          {new, removing} = Removal.due(removing, visible, connected, now, @retry)
          actions = actions ++ Enum.map(new, &{now, &1})
          next = Removal.next_check(removing, now, @retry)
          state = {removing, now + max(next || until + 1, 1), actions}
          {state, state}
      end)
      |> Enum.to_list()
      |> List.last()
      |> elem(2)
    end

    test "a node visible through distribution is asked to leave, never disconnected from here" do
      visible = MapSet.new([:a])

      {[{:ask_to_leave, :a}], removing} =
        Removal.start(%{}, [:a], visible, MapSet.new([:a]), MapSet.new(), 0)

      actions = run(removing, visible, MapSet.new([:a]), 600_000)
      kinds = actions |> Enum.map(fn {_, action} -> elem(action, 0) end) |> Enum.uniq()
      assert kinds == [:ask_to_leave, :still_connected]

      # A node that was only listed, then seen through distribution, is asked too.
      removing = %{a: %{since: 0, asked: 0}}

      assert {[{:ask_to_leave, :a}], %{a: %{asked: 1}}} =
               Removal.due(removing, visible, MapSet.new([:a]), @retry, @retry)
    end

    test "asks back off: 5 s, 10 s, 20 s, 40 s, then every 60 s" do
      {_, removing} = Removal.start(%{}, [:a], MapSet.new([:a]), MapSet.new(), MapSet.new(), 0)
      actions = run(removing, MapSet.new([:a]), MapSet.new(), 300_000)
      asks = for {at, {:ask_to_leave, :a}} <- actions, do: at

      assert asks == [5_000, 15_000, 35_000, 75_000, 135_000, 195_000, 255_000]
      assert Removal.leave_grace() == 5_000
      assert Removal.next_check(removing, 0, @retry) == 5_000
      assert Removal.next_check(removing, 4_000, @retry) == 1_000
      assert Removal.next_check(removing, 9_000, @retry) == 0
    end

    test "a node still connected is reported once, at its 2nd request" do
      {_, removing} = Removal.start(%{}, [:a], MapSet.new([:a]), MapSet.new(), MapSet.new(), 0)
      actions = run(removing, MapSet.new([:a]), MapSet.new(), 600_000)

      assert [{5_000, {:still_connected, :a}}] =
               Enum.filter(actions, &match?({_, {:still_connected, _}}, &1))

      assert Removal.warn_after() == 2
    end

    test "a node only the list_nodes MFA sees (hidden) is disconnected, retried until it goes" do
      connected = MapSet.new([:h])

      {[{:disconnect, :h}], removing} =
        Removal.start(%{}, [:h], MapSet.new(), connected, MapSet.new(), 0)

      assert removing == %{h: %{since: 0, asked: 0}}
      # A failed disconnect is kept, and retried after `retry`.
      removing = Removal.disconnected(removing, :h, :error)
      assert Removal.next_check(removing, 10, @retry) == @retry - 10
      assert {[], ^removing} = Removal.due(removing, MapSet.new(), connected, @retry - 1, @retry)

      assert {[{:disconnect, :h}], %{h: %{since: @retry, asked: 0}} = removing} =
               Removal.due(removing, MapSet.new(), connected, @retry, @retry)

      assert Removal.disconnected(removing, :h, :ok) == %{}
      assert Removal.next_check(%{}, 0, @retry) == nil
    end

    test "a node gone from both views is done; nodes not connected at all are not removed" do
      {_, removing} =
        Removal.start(%{}, [:a], MapSet.new([:a]), MapSet.new([:a]), MapSet.new(), 0)

      assert {[], %{}} = Removal.due(removing, MapSet.new(), MapSet.new(), 10_000, @retry)

      assert {[], %{}} = Removal.start(%{}, [:gone], MapSet.new(), MapSet.new(), MapSet.new(), 0)
    end

    test "a node wanted again is no longer removed; one already being removed is not asked twice" do
      {_, removing} =
        Removal.start(%{}, [:a], MapSet.new([:a]), MapSet.new([:a]), MapSet.new(), 0)

      assert {[], ^removing} =
               Removal.start(removing, [:a], MapSet.new([:a]), MapSet.new([:a]), MapSet.new(), 1)

      assert {[], %{}} =
               Removal.start(removing, [], MapSet.new(), MapSet.new(), MapSet.new([:a]), 1)
    end
  end

  describe "HealthCheck" do
    test "validate/1: {kind, opts}, the kind's defaults, nil for none" do
      assert HealthCheck.validate(nil) == {:ok, nil}
      assert HealthCheck.validate({:tcp, port: 4000}) == {:ok, {:tcp, port: 4000, timeout: 500}}

      assert HealthCheck.validate({:tcp, [timeout: 50, port: 1]}) ==
               {:ok, {:tcp, port: 1, timeout: 50}}

      for bad <- [
            {:tcp, port: 0},
            {:tcp, port: 65_536},
            {:tcp, []},
            {:tcp, port: 1, timeout: 0},
            {:tcp, port: 1, retries: 1},
            {:tcp, [:port]}
          ] do
        assert {:error, "expected {:tcp, port: 1..65535, timeout: ms}" <> _} =
                 HealthCheck.validate(bad)
      end

      assert {:error, "unknown kind; the kinds are [:tcp]"} =
               HealthCheck.validate({:http, port: 1})

      assert {:error, "expected nil or {kind, opts}" <> _} = HealthCheck.validate(:tcp)
    end

    test "the kind owns its timeout, its words and what the NIF runs" do
      {:ok, check} = HealthCheck.validate({:tcp, port: 4000, timeout: 250})
      assert HealthCheck.timeout(check) == 250
      assert HealthCheck.describe(check) == "port 4000"

      assert LibclusterDroplet.HealthCheck.TCP.native(port: 4000, timeout: 250) ==
               %{kind: :tcp, port: 4000, timeout_ms: 250}
    end

    test "no check or no targets: unchecked, nothing started" do
      assert HealthCheck.start([], {:tcp, port: 1, timeout: 1}, 0) == :unchecked
      assert HealthCheck.start([{:a@h, "127.0.0.1"}], nil, 0) == :unchecked
      assert HealthCheck.run([{:a@h, "127.0.0.1"}], nil) == :unchecked
    end

    test "run/2 checks every target and answers in target order" do
      {:ok, listen} = :gen_tcp.listen(0, ip: {127, 0, 0, 1})
      {:ok, port} = :inet.port(listen)
      targets = [{:"a@127.0.0.1", "127.0.0.1"}, {:b@h, "not-an-ip"}]

      assert {:ok, [{"127.0.0.1", {:ok, _}}, {"not-an-ip", {:error, :invalid_address}}], ms} =
               HealthCheck.run(targets, {:tcp, port: port, timeout: 5_000})

      assert is_number(ms)
      :gen_tcp.close(listen)
    end

    test "results/2: a verdict per node, from the NIF's results in target order" do
      targets = [{:a, "10.0.0.2"}, {:b, "10.0.0.3"}, {:c, "10.0.0.3"}]

      results = [
        {"10.0.0.2", {:error, :timeout}},
        {"10.0.0.3", {:ok, 7}},
        {"10.0.0.3", {:error, :refused}}
      ]

      assert HealthCheck.results(targets, results) ==
               %{a: {:error, :timeout}, b: :ok, c: {:error, :refused}}
    end
  end
end
