defmodule LibclusterDroplet.SecretsAndBoundaryTest do
  @moduledoc false
  # The token never leaks; the NIF never harms the VM.
  # Not async: the scheduler test's 10,000-droplet listings and 1,000-address
  # probes are heavy enough to run alone.
  use ExUnit.Case, async: false

  import ExUnit.CaptureLog
  alias Cluster.Strategy.Droplet.Config
  alias LibclusterDroplet.{FakeAPI, Native, SpyMembership, TestCluster}

  @token "dop_v1_SECRET_5e1f0c2b7a9d48e3b6c4a1f2e3d4c5b6a7980f1e2d3c4b5a69788796a5b4c3d2"

  defp start_strategy(api, extra \\ []) do
    topology = :"secrets_#{System.unique_integer([:positive])}"
    spy = SpyMembership.start()

    config =
      [
        token: @token,
        api_url: FakeAPI.url(api),
        polling_interval: 100,
        max_requests_per_minute: 60_000
      ] ++ extra

    pid =
      start_supervised!(
        {Cluster.Strategy.Droplet,
         [topology: topology, config: config] ++ SpyMembership.mfas(spy)},
        id: topology
      )

    {pid, spy}
  end

  defp droplets do
    for i <- 1..2, do: FakeAPI.droplet(id: i, name: "n-#{i}", private_ip: "127.0.5.#{i + 1}")
  end

  describe "the token" do
    test "is not in :sys.get_state, :sys.get_status, format_status or inspect of any struct" do
      {:ok, api} = FakeAPI.start_link(token: @token, droplets: droplets())
      {pid, spy} = start_strategy(api)
      TestCluster.await(fn -> length(SpyMembership.connected(spy)) == 2 end)

      state = :sys.get_state(pid)
      {:status, ^pid, _, status} = :sys.get_status(pid)

      for term <- [state, status, state.config] do
        refute inspect(term, limit: :infinity, printable_limit: :infinity) =~ @token

        refute inspect(term, structs: false, limit: :infinity, printable_limit: :infinity) =~
                 @token

        refute :io_lib.format(~c"~p", [term]) |> IO.iodata_to_binary() =~ @token
      end

      {:ok, listing} = LibclusterDroplet.list_droplets(token: @token, api_url: FakeAPI.url(api))
      refute inspect(listing, limit: :infinity) =~ @token
    end

    test "is not in any log line, debug lines included, or crash report across faults, a crash and a restart" do
      {:ok, api} = FakeAPI.start_link(token: @token, droplets: droplets())
      # libcluster's switch for debug lines; this module is not async.
      Application.put_env(:libcluster, :debug, true)
      on_exit(fn -> Application.delete_env(:libcluster, :debug) end)

      log =
        capture_log([level: :debug], fn ->
          {pid, spy} = start_strategy(api, max_backoff: 200, api_timeout: 300)
          TestCluster.await(fn -> length(SpyMembership.connected(spy)) == 2 end)

          faults = [
            {:status, 401},
            {:status, 500},
            {:slow, 1_000},
            :html,
            :truncated,
            :reset,
            :empty_with_total,
            :next_loop,
            {:redirect, "http://127.0.0.9:1/v2/droplets"},
            {:foreign_next, "http://127.0.0.9:1/v2/droplets?page=2"},
            {:json, %{"droplets" => [%{"id" => "x"}]}}
          ]

          for {fault, i} <- Enum.with_index(faults, 1) do
            FakeAPI.inject(api, fault, times: 2)
            # Both faulty answers given (counted by the API, so no look at
            # the strategy can miss them), then a poll that succeeded.
            TestCluster.await(fn -> faulty_answers(api) >= 2 * i end, 10_000)
            TestCluster.await(fn -> :sys.get_state(pid).failures == 0 end, 10_000)
          end

          # A crash: the strategy's state replaced by garbage, then its next
          # tick. The crash report prints the last message and the state.
          :sys.replace_state(pid, fn state -> %{state | managed: :not_a_mapset} end)
          TestCluster.await(fn -> not Process.alive?(pid) end)
          # Restarted by its supervisor with the same config, it polls on.
          count = FakeAPI.request_count(api)
          TestCluster.await(fn -> FakeAPI.request_count(api) > count + 2 end)
        end)

      assert log =~ "terminating", "a crash report was logged"
      assert log =~ "[debug] [libcluster:secrets_", "debug lines were on"
      assert log =~ "found 2 droplets with 1 requests"
      assert log =~ "unauthorized"
      assert log =~ "pagination_loop"
      refute log =~ @token
    end

    test "is refused as part of an option error message" do
      error = assert_raise ArgumentError, fn -> Config.new!(token: @token, tls_verify: false) end
      refute error.message =~ @token
    end

    test "TLS verification cannot be turned off: there is no option for it" do
      assert_raise ArgumentError, ~r/unknown option\(s\) \[:verify\]/, fn ->
        Config.new!(token: @token, verify: :verify_none)
      end

      assert {:error, {:invalid_request, _}} =
               LibclusterDroplet.list_droplets(token: @token, insecure: true)
    end
  end

  describe "the NIF boundary" do
    test "a panic inside a NIF call is an Erlang exception, and the VM goes on" do
      assert_raise ErlangError, ~r/nif_panicked/, fn -> Native.debug_panic(:nif, make_ref()) end
      assert Native.nif_version() == "0.1.0"
    end

    test "a panic on a NIF thread comes back as {:error, {:panic, _}}" do
      ref = make_ref()
      assert {:ok, _handle, 1} = Native.debug_panic(:list, ref)
      assert_receive {:droplet_nif_list, ^ref, {:error, {:panic, detail}}, _info}, 5_000
      assert is_binary(detail)

      # And the NIF still works afterwards.
      {:ok, api} = FakeAPI.start_link(token: @token, droplets: droplets())
      assert {:ok, _} = LibclusterDroplet.list_droplets(token: @token, api_url: FakeAPI.url(api))
    end

    test "no NIF call occupies a normal scheduler for more than 1 ms" do
      {:ok, api} = FakeAPI.start_link(token: @token)

      FakeAPI.put_droplets(
        api,
        for(
          i <- 1..10_000,
          do:
            FakeAPI.droplet(
              id: i,
              name: "d-#{i}",
              private_ip: "127.2.#{div(i, 250)}.#{rem(i, 250) + 1}"
            )
        )
      )

      {:ok, listener} = :gen_tcp.listen(0, ip: {127, 0, 0, 1})
      {:ok, port} = :inet.port(listener)
      targets = for i <- 1..1_000, do: "127.3.#{div(i, 250)}.#{rem(i, 250) + 1}"
      # The longest list a probe takes, of the longest addresses it reads: what
      # the NIF copies on the scheduler, at its worst. Invalid, so no socket.
      longest = for i <- 1..10_000, do: String.pad_leading("#{i}", 64, "x")
      url = FakeAPI.url(api)

      # The positive controls, measured exactly like the NIF calls: a NIF
      # computing for 20 ms of CPU time and one sleeping 20 ms, as blocking
      # I/O would, both on the calling scheduler.
      controls =
        for kind <- [:spin, :sleep], do: {kind, nif_slot(fn -> Native.debug_hold(kind, 20) end)}

      calls =
        for _ <- 1..5 do
          {:ok, request} =
            LibclusterDroplet.list_request(token: @token, api_url: url, network: :private)

          ref = make_ref()
          list = nif_slot(fn -> Native.list_droplets(request, ref) end)
          receive do: ({:droplet_nif_list, ^ref, {:ok, _}, _} -> :ok)

          addresses = ["127.0.0.1" | targets]
          ref = make_ref()
          probe = nif_slot(fn -> Native.probe(addresses, port, 200, 512, ref) end)
          receive do: ({:droplet_nif_probe, ^ref, [_ | _]} -> :ok)

          ref = make_ref()
          longest_probe = nif_slot(fn -> Native.probe(longest, port, 200, 512, ref) end)
          receive do: ({:droplet_nif_probe, ^ref, [_ | _]} -> :ok)

          version = nif_slot(fn -> Native.nif_version() end)

          [
            {:list_droplets, list},
            {:probe, probe},
            {:probe_10_000_addresses, longest_probe},
            {:nif_version, version}
          ]
        end
        |> List.flatten()

      for {kind, {result, held_us}} <- controls do
        assert result == :ok

        assert held_us >= 1_000,
               "the check missed a NIF holding its scheduler (#{kind}): #{held_us} µs"
      end

      for {name, {result, _held_us}} <- calls,
          do:
            assert(
              match?({:ok, _handle, _concurrency}, result) or result == "0.1.0",
              "#{name}: #{inspect(result)}"
            )

      held = for {name, {_result, held_us}} <- calls, held_us >= 1_000, do: {name, held_us}
      assert held == [], "NIF calls held a scheduler for over 1 ms (µs): #{inspect(held)}"
      :gen_tcp.close(listener)
    end
  end

  defp faulty_answers(api), do: api |> FakeAPI.requests() |> Enum.count(& &1.fault)

  @doc false
  # Runs `fun` (one NIF call) between two readings of the calling scheduler
  # thread's clock and run-queue wait (its /proc schedstat), and returns
  # `{result, held_us}`: the wall time between the readings less the time
  # the thread spent runnable but off a CPU. That is what the call itself
  # held the scheduler for, computing or blocked (a sleep, a socket read):
  # being preempted by a busy neighbour is run-queue wait, not holding, so
  # preemption cannot make a call look long.
  #
  # A garbage collection first leaves the heap room for the readings' small
  # terms, so none runs between them (a 10,000-droplet reply was just
  # received); the yield then gives the process a fresh time slice, so
  # nothing schedules it out (or onto another scheduler) before the second
  # reading: both must come from the same thread.
  def nif_slot(fun) do
    :erlang.garbage_collect()
    :erlang.yield()
    {tid, started, wait_before} = Native.debug_thread_times()
    result = fun.()
    {^tid, ended, wait_after} = Native.debug_thread_times()
    held_ns = ended - started - (wait_after - wait_before)
    {result, div(held_ns, 1_000)}
  end
end
