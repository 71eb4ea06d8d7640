defmodule LibclusterDroplet.NifBudgetTest do
  @moduledoc false
  # The NIF's thread budget, the concurrency it reports, calls cancelled
  # with their caller, and the bound on a probe's address list.
  #
  # Not async: these tests count the whole VM's NIF threads and fill the
  # VM-wide budget, so no other test may run NIF calls meanwhile.
  use ExUnit.Case, async: false

  import ExUnit.CaptureLog

  alias LibclusterDroplet.{
    Call,
    FakeAPI,
    HealthCheck,
    Listing,
    Native,
    SpyMembership,
    TestCluster
  }

  @moduletag timeout: 180_000

  doctest LibclusterDroplet.Call

  @token "dop_v1_budget_test_token_0123456789"
  @max_calls 64
  @max_helpers 1_024

  setup do
    # Calls of earlier tests (a cancelled probe waits out the probes in
    # flight) must be over: each test starts from an idle budget.
    TestCluster.await(fn -> Native.debug_budget() == {0, 0} end, 60_000)
    TestCluster.await(fn -> nif_threads() == 0 end, 10_000)
    port = TestCluster.free_port()
    [hole] = TestCluster.allocate_addresses(1)
    sockets = TestCluster.black_hole(hole, port)
    on_exit(fn -> Enum.each(sockets, &:gen_tcp.close/1) end)
    {:ok, hole: hole, port: port}
  end

  # Read from the kernel: what really runs, whatever the budget's own
  # accounting says.
  defp nif_threads, do: TestCluster.Remote.nif_threads()

  # Takes up to `helpers` helper permits (and a call slot) as a call would,
  # until released. Asserted here, not matched by the caller: a failed match
  # would quote the handle in the failure report, which would then keep it
  # (and its permits) alive for the rest of the run.
  defp admit!(helpers, expected) do
    {:ok, held, granted} = Native.debug_admit(helpers)
    assert granted == expected
    held
  end

  # Takes every helper permit, as eight calls do at most 128 each.
  defp fill_helpers!, do: for(_ <- 1..8, do: admit!(@max_helpers, div(@max_helpers, 8)))

  defp release!(held), do: held |> List.wrap() |> Enum.each(&Native.debug_release/1)

  # Waits for the answer of `call` (it may have been cancelled), then until
  # the budget no longer counts it.
  defp await_finished(%Call{ref: ref}, budget \\ {0, 0}) do
    receive do
      {:droplet_nif_probe, ^ref, _results} -> :ok
      {:droplet_nif_list, ^ref, _result, _info} -> :ok
    after
      30_000 -> flunk("no answer")
    end

    TestCluster.await(fn -> Native.debug_budget() == budget end)
  end

  # Samples `fun` every few ms for `ms` and returns the largest value seen.
  defp peak(fun, ms) do
    deadline = System.monotonic_time(:millisecond) + ms

    Stream.repeatedly(fn -> fun.() end)
    |> Enum.reduce_while(0, fn value, max ->
      if System.monotonic_time(:millisecond) > deadline,
        do: {:halt, max(value, max)},
        else: {:cont, max(value, max)}
    end)
  end

  describe "the thread budget" do
    test "eight probe calls asking for 1,024 each share 1,024 helpers: threads never exceed the budget",
         %{hole: hole, port: port} do
      # 5,000 black holes per call: without a shared budget each call would
      # run 512 probes at once, 4,096 threads in all.
      targets = List.duplicate(hole, 5_000)

      calls =
        for _ <- 1..8 do
          {:ok, call} =
            LibclusterDroplet.start_probe(targets, port, timeout: 2_000, concurrency: 1_024)

          call
        end

      # Each starts with an eighth of the helpers (128), its fair share:
      # not, as before the budget was shared fairly, [512, 512, 3, 1, 1, 1,
      # 1, 1], the last five on their coordinators alone for hours.
      assert Enum.map(calls, & &1.concurrency) == List.duplicate(129, 8)
      assert Enum.sum(Enum.map(calls, & &1.concurrency)) == 8 + @max_helpers
      assert Native.debug_budget() == {8, @max_helpers}

      # Every probe hangs for its whole 2 s timeout, so the threads all run
      # at once: the peak is the budget, and never more.
      seen = peak(&nif_threads/0, 2_500)
      assert seen <= 8 + @max_helpers, "#{seen} NIF threads"
      assert seen >= @max_helpers, "the black holes did not hold the threads: #{seen}"

      # The rest would take 39 timeouts on each call.
      Enum.each(calls, &LibclusterDroplet.cancel/1)

      for %Call{ref: ref} <- calls,
          do: assert_receive({:droplet_nif_probe, ^ref, {:error, :cancelled}}, 30_000)

      TestCluster.await(fn -> nif_threads() == 0 end, 30_000)
      assert Native.debug_budget() == {0, 0}
    end

    test "over 64 calls in flight a call is refused at once with :busy", %{hole: hole, port: port} do
      # One real call in flight (60 black holes one at a time) and 63
      # admitted without threads fill the 64 call slots.
      {:ok, real} = LibclusterDroplet.start_probe(List.duplicate(hole, 60), port, concurrency: 1)
      held = for _ <- 2..@max_calls, do: admit!(0, 0)
      assert Native.debug_budget() == {@max_calls, 0}

      {:ok, request} =
        LibclusterDroplet.list_request(token: @token, api_url: "http://127.0.0.1:1")

      assert LibclusterDroplet.start_probe(["127.0.0.1"], port) == {:error, :busy}
      assert LibclusterDroplet.start_list_droplets(request) == {:error, :busy}
      assert LibclusterDroplet.probe(["127.0.0.1"], port) == {:error, :busy}

      assert LibclusterDroplet.list_droplets(token: @token, api_url: "http://127.0.0.1:1") ==
               {:error, :busy}

      assert Native.debug_admit(0) == {:error, :busy}
      assert LibclusterDroplet.Error.format(:busy) =~ "64 calls in flight"

      # One slot back, and the next call runs.
      :ok = Native.debug_release(hd(held))
      assert [{"127.0.0.1", {:error, :refused}}] = LibclusterDroplet.probe(["127.0.0.1"], port)

      LibclusterDroplet.cancel(real)
      Enum.each(held, &Native.debug_release/1)
    end

    test "a call gets the concurrency it asks for, capped per call and by the free helpers",
         %{port: port} do
      invalid = List.duplicate("not an ip", 1_000)

      {:ok, request} =
        LibclusterDroplet.list_request(token: @token, api_url: "http://127.0.0.1:1")

      # Each call is over, its helpers back, before the next one asks.
      concurrency = fn addresses, opts ->
        budget = Native.debug_budget()
        {:ok, call} = LibclusterDroplet.start_probe(addresses, port, opts)
        await_finished(call, budget)
        call.concurrency
      end

      pages = fn page_concurrency ->
        budget = Native.debug_budget()

        {:ok, call} =
          LibclusterDroplet.start_list_droplets(%{request | page_concurrency: page_concurrency})

        await_finished(call, budget)
        call.concurrency
      end

      assert concurrency.(invalid, concurrency: 10) == 10
      # A call starts with at most 128 helpers, an eighth of them, and
      # grows from there as its items complete.
      assert concurrency.(invalid, []) == 129
      assert concurrency.(invalid, concurrency: 100_000) == 129
      # Never more threads than targets, and at least the coordinator.
      assert concurrency.(Enum.take(invalid, 7), concurrency: 512) == 7
      assert concurrency.([], concurrency: 512) == 1
      assert pages.(4) == 4
      assert pages.(64) == 64

      # 1,000 of the 1,024 taken: 24 left.
      held = for(_ <- 1..7, do: admit!(128, 128)) ++ [admit!(104, 104)]
      assert concurrency.(invalid, concurrency: 512) == 25
      assert pages.(64) == 25
      all = admit!(512, 24)
      assert concurrency.(invalid, concurrency: 512) == 1
      assert pages.(4) == 1

      release!([all | held])
    end
  end

  describe "waits follow the concurrency granted" do
    test "HealthCheck's watchdog wait counts the waves of the concurrency the call got",
         %{hole: hole, port: port} do
      targets = for i <- 1..3, do: {:"n#{i}@#{hole}", hole}

      {:ok, call, wait} = HealthCheck.start(targets, {:tcp, [port: port, timeout: 1_000]}, 5_000)
      assert {call.concurrency, wait} == {3, 1_000 + 5_000}
      LibclusterDroplet.cancel(call)
      await_finished(call)

      held = fill_helpers!()
      {:ok, call, wait} = HealthCheck.start(targets, {:tcp, [port: port, timeout: 1_000]}, 5_000)
      # One probe at a time: three timeouts in a row, not one.
      assert {call.concurrency, wait} == {1, 3 * 1_000 + 5_000}
      LibclusterDroplet.cancel(call)
      release!(held)
    end

    test "probe/3 waits for every wave the NIF really runs", %{hole: hole, port: port} do
      # Granted no helper, 12 black holes take 12 timeouts (6 s) in a row:
      # longer than the one timeout plus 5 s the requested concurrency of
      # 512 would promise.
      held = fill_helpers!()
      results = LibclusterDroplet.probe(List.duplicate(hole, 12), port, timeout: 500)
      release!(held)

      assert is_list(results), inspect(results)
      assert Enum.all?(results, &match?({_, {:error, :timeout}}, &1)), inspect(results)
    end
  end

  describe "a call lives as long as its handle" do
    test "list_droplets/1 answers within its deadline even when no reply comes: the wait is bounded and the call cancelled",
         %{hole: hole, port: port} do
      {:ok, probe} = LibclusterDroplet.start_probe([hole], port, timeout: 30_000)
      # A call whose answer can never come: a ref nothing will be sent to.
      lost = %{probe | ref: make_ref()}
      assert LibclusterDroplet.await_list(lost, "http://127.0.0.1:9", 300) == {:error, :timeout}
      # The wait gave up and cancelled the call: it answers at once.
      assert_receive {:droplet_nif_probe, ref, results}, 30_000
      assert ref == probe.ref
      assert results in [{:error, :cancelled}, [{hole, {:error, :timeout}}]]
    end

    test "a probe call whose caller is killed stops: its threads exit long before the work would end",
         %{hole: hole, port: port} do
      test = self()

      # 200 black holes 4 at a time, 3 s each: 150 s of work.
      caller =
        spawn(fn ->
          {:ok, call} =
            LibclusterDroplet.start_probe(List.duplicate(hole, 200), port,
              timeout: 3_000,
              concurrency: 4
            )

          send(test, {:started, call.concurrency})
          Process.sleep(:infinity)
        end)

      assert_receive {:started, 4}, 10_000
      TestCluster.await(fn -> nif_threads() == 4 end)
      started = System.monotonic_time(:millisecond)
      Process.exit(caller, :kill)

      # The probes in flight end by their 3 s timeout; no new one starts.
      TestCluster.await(fn -> nif_threads() == 0 end, 30_000)
      assert System.monotonic_time(:millisecond) - started < 30_000
      assert Native.debug_budget() == {0, 0}
    end

    test "a listing whose caller is killed requests no further page" do
      {:ok, api} = FakeAPI.start_link(token: @token)

      FakeAPI.put_droplets(
        api,
        for(i <- 1..200, do: FakeAPI.droplet(id: i, name: "d-#{i}", private_ip: "127.4.0.#{i}"))
      )

      # 200 pages of one droplet, 200 ms each, one at a time: 40 s.
      FakeAPI.inject(api, {:slow, 200}, times: :infinity)
      test = self()

      caller =
        spawn(fn ->
          {:ok, _listing} =
            LibclusterDroplet.list_droplets(
              token: @token,
              api_url: FakeAPI.url(api),
              per_page: 1,
              page_concurrency: 1
            )

          send(test, :listing_finished)
        end)

      TestCluster.await(fn -> FakeAPI.request_count(api) >= 3 end, 20_000)
      Process.exit(caller, :kill)
      # The page in flight may still be asked for and answered; then none.
      TestCluster.await(fn -> nif_threads() == 0 end, 20_000)
      count = FakeAPI.request_count(api)
      Process.sleep(1_000)
      assert FakeAPI.request_count(api) == count
      assert count < 50
      refute_received :listing_finished
    end

    test "cancel/1 stops a call, which still answers: {:error, :cancelled}", %{
      hole: hole,
      port: port
    } do
      {:ok, %Call{ref: ref} = call} =
        LibclusterDroplet.start_probe(List.duplicate(hole, 100), port,
          timeout: 2_000,
          concurrency: 2
        )

      assert LibclusterDroplet.cancel(call) == :ok
      assert_receive {:droplet_nif_probe, ^ref, {:error, :cancelled}}, 30_000
      assert LibclusterDroplet.Error.format(:cancelled) =~ "cancelled"

      # Cancelling a finished call, twice, does nothing.
      {:ok, %Call{ref: ref} = call} = LibclusterDroplet.start_probe(["127.0.0.1"], port)
      assert_receive {:droplet_nif_probe, ^ref, [{"127.0.0.1", {:error, :refused}}]}, 10_000
      assert LibclusterDroplet.cancel(call) == :ok
      assert LibclusterDroplet.cancel(call) == :ok

      assert {:error, {:invalid_request, _}} = Native.cancel(make_ref())
    end

    test "probe/3 and list_droplets/1 keep their own call alive while they wait",
         %{hole: hole, port: port} do
      {:ok, api} = FakeAPI.start_link(token: @token)

      FakeAPI.put_droplets(
        api,
        for(i <- 1..4, do: FakeAPI.droplet(id: i, name: "d-#{i}", private_ip: "127.4.1.#{i}"))
      )

      FakeAPI.inject(api, {:slow, 300}, times: :infinity)
      test = self()

      # Garbage collections of a waiting caller must not collect the handle
      # of its own call (which would cancel it): forced every 20 ms here.
      run = fn fun ->
        pid = spawn(fn -> send(test, {:result, self(), fun.()}) end)
        collector = spawn(fn -> collect_garbage(pid) end)

        receive do
          {:result, ^pid, result} ->
            Process.exit(collector, :kill)
            result
        after
          60_000 -> flunk("no result")
        end
      end

      probed =
        run.(fn ->
          LibclusterDroplet.probe(List.duplicate(hole, 5), port, timeout: 300, concurrency: 1)
        end)

      assert is_list(probed), inspect(probed)
      assert Enum.all?(probed, &match?({_, {:error, :timeout}}, &1))

      listed =
        run.(fn ->
          LibclusterDroplet.list_droplets(
            token: @token,
            api_url: FakeAPI.url(api),
            per_page: 1,
            page_concurrency: 1
          )
        end)

      assert {:ok, %Listing{droplets: [_, _, _, _]}} = listed
    end
  end

  describe "the strategy" do
    test "cancels the probes of a poll its watchdog gives up on", %{hole: hole, port: port} do
      {:ok, api} = FakeAPI.start_link(token: @token)

      FakeAPI.put_droplets(
        api,
        for(i <- 1..20, do: FakeAPI.droplet(id: i, name: "hole-#{i}", private_ip: hole))
      )

      # Granted no helper, the poll's probes of 20 black holes run one at a
      # time: 40 s, and a watchdog of 45 s.
      held = fill_helpers!()
      spy = SpyMembership.start()

      config = [
        token: @token,
        api_url: FakeAPI.url(api),
        # After the failure, nothing else happens for a minute: only the
        # strategy's own cancel, not a later poll, can stop the probes.
        polling_interval: 60_000,
        max_backoff: 60_000,
        api_timeout: 5_000,
        health_check: {:tcp, port: port, timeout: 2_000}
      ]

      pid =
        start_supervised!(
          {Cluster.Strategy.Droplet,
           [topology: :budget_watchdog, config: config] ++ SpyMembership.mfas(spy)}
        )

      TestCluster.await(fn -> match?(%{phase: %{stage: :probing}}, :sys.get_state(pid)) end)
      assert %{phase: %{call: %Call{concurrency: 1}}} = :sys.get_state(pid)
      TestCluster.await(fn -> nif_threads() == 1 end)
      # Held here too: dropped by the strategy, garbage collection alone
      # would cancel it sooner or later.
      %{phase: %{call: call}} = :sys.get_state(pid)

      # The watchdog fires now rather than in 45 s.
      {ref, _timer} = :sys.get_state(pid).timers.watchdog

      capture_log(fn ->
        send(pid, {:droplet_timer, :watchdog, ref})
        TestCluster.await(fn -> :sys.get_state(pid).schedule.failures == 1 end)
      end)

      # The probe in flight ends by its 2 s timeout; the 19 others never start.
      TestCluster.await(fn -> nif_threads() == 0 end, 20_000)
      assert :sys.get_state(pid).phase == nil
      LibclusterDroplet.cancel(call)
      release!(held)
    end
  end

  describe "a probe's address list" do
    test "holds at most 10,000 addresses, checked before anything starts", %{port: port} do
      at_cap = List.duplicate("not an ip", 10_000)
      results = LibclusterDroplet.probe(at_cap, port)
      assert length(results) == 10_000

      assert {:error, {:invalid_request, detail}} = LibclusterDroplet.probe(["x" | at_cap], port)
      assert detail =~ "10000"
      assert {:error, {:invalid_request, _}} = LibclusterDroplet.start_probe(["x" | at_cap], port)
      assert Native.debug_budget() == {0, 0}

      # A million addresses are refused as fast: the list is not walked
      # past its cap.
      assert {:error, {:invalid_request, _}} =
               LibclusterDroplet.probe(List.duplicate("127.0.0.1", 1_000_000), port)
    end

    test "must be a proper list of binaries", %{port: port} do
      for bad <- [
            ["127.0.0.1" | "127.0.0.2"],
            ["127.0.0.1", :atom],
            [~c"127.0.0.1"],
            "127.0.0.1",
            [<<1::7>>]
          ] do
        assert {:error, {:invalid_request, "addresses must be a list of binaries"}} =
                 LibclusterDroplet.probe(bad, port)
      end
    end

    test "an address over 64 bytes is that target's :invalid_address, echoed back as given",
         %{port: port} do
      long = String.duplicate("1", 65)
      huge = String.duplicate("9", 1_000_000)
      sub = binary_part("xx127.0.0.1", 2, 9)

      assert [
               {"127.0.0.1", {:error, :refused}},
               {^long, {:error, :invalid_address}},
               {^huge, {:error, :invalid_address}},
               {^sub, {:error, :refused}}
             ] = LibclusterDroplet.probe(["127.0.0.1", long, huge, sub], port)
    end
  end

  defp collect_garbage(pid) do
    :erlang.garbage_collect(pid)
    Process.sleep(20)
    collect_garbage(pid)
  end
end
