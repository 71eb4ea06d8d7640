defmodule LibclusterDroplet.SecretsAndBoundaryTest do
  @moduledoc false
  # The token never leaks; the NIF never harms the VM.
  # Not async: the scheduler test's 10,000-droplet listings and 1,000-address
  # probes are heavy enough to run alone.
  use ExUnit.Case, async: false

  import ExUnit.CaptureLog
  alias Cluster.Strategy.Droplet.Config
  alias LibclusterDroplet.{FakeAPI, Native, SpyMembership, TestCluster}
  alias LibclusterDroplet.TestCluster.Remote

  @token "dop_v1_SECRET_5e1f0c2b7a9d48e3b6c4a1f2e3d4c5b6a7980f1e2d3c4b5a69788796a5b4c3d2"

  defp start_strategy(api, extra \\ []) do
    topology = :"secrets_#{System.unique_integer([:positive])}"
    spy = SpyMembership.start()

    config =
      Keyword.merge(
        [
          token: @token,
          api_url: FakeAPI.url(api),
          polling_interval: 100,
          max_requests_per_minute: 60_000
        ],
        extra
      )

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
            {:raw, "<html><body>Bad Gateway</body></html>"},
            {:raw, ~s({"droplets":[{"id":1,"name":"cut)},
            {:edit, &Map.put(&1, "droplets", [])},
            {:edit, &put_in(&1, ["links", "pages"], %{"next" => &2})},
            {:redirect, "http://127.0.0.9:1/v2/droplets"},
            {:edit, &put_in(&1, ["links", "pages", "next"], "http://127.0.0.9:1/v2/droplets")},
            {:json, %{"droplets" => [%{"id" => "x"}]}}
          ]

          for {fault, i} <- Enum.with_index(faults, 1) do
            FakeAPI.inject(api, fault, times: 2)
            # Both faulty answers given (counted by the API, so no look at
            # the strategy can miss them), then a poll that succeeded.
            TestCluster.await(fn -> faulty_answers(api) >= 2 * i end, 10_000)
            TestCluster.await(fn -> :sys.get_state(pid).schedule.failures == 0 end, 10_000)
          end

          # A crash: the strategy's state replaced by garbage, then its next
          # tick. The crash report prints the last message and the state.
          :sys.replace_state(pid, fn state -> %{state | members: :not_members} end)
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

    test "is in no debug line of a cluster: shares followed and applied, a leader taken over, " <>
           "probes and connects failing, a share of another topology" do
      {:ok, api} = FakeAPI.start_link(token: @token)
      [addr_a, addr_b, refused, no_node] = TestCluster.allocate_addresses(4)
      {:ok, listener} = :gen_tcp.listen(0, ip: {127, 0, 0, 1})
      {:ok, port} = :inet.port(listener)
      :gen_tcp.close(listener)

      # The health-check port answers on both nodes and on a droplet with no
      # node (its connect fails); nothing answers on `refused`.
      listeners = for a <- [addr_a, addr_b, no_node], do: TestCluster.open_port(a, port)

      for {address, i} <- Enum.with_index([addr_a, addr_b, refused, no_node], 1) do
        FakeAPI.add_droplet(api, FakeAPI.droplet(id: i, name: "d-#{i}", private_ip: address))
      end

      nodes =
        for address <- [addr_a, addr_b] do
          node = TestCluster.start_node("app", address, log_level: :debug)
          on_exit(fn -> TestCluster.stop(node) end)
          TestCluster.call(node, Application, :put_env, [:libcluster, :debug, true])
          TestCluster.call(node, System, :put_env, ["DIGITALOCEAN_TOKEN", @token])
          TestCluster.call(node, Remote, :capture_warnings, [:debug])
          node
        end

      # Read from the environment: a literal token would sit in the child
      # spec, which the supervisor's progress reports print at debug level.
      config = [
        token: {:system, "DIGITALOCEAN_TOKEN"},
        api_url: FakeAPI.url(api),
        node_basename: "app",
        polling_interval: 200,
        max_requests_per_minute: 60_000,
        health_check: {:tcp, port: port, timeout: 500}
      ]

      sups = Map.new(nodes, &{&1.node, TestCluster.start_strategy(&1, :droplets, config)})
      [a, b] = Enum.sort_by(nodes, & &1.node)
      TestCluster.await(fn -> TestCluster.full_mesh?(nodes) end, 15_000)

      logged = fn node -> TestCluster.call(node, Remote, :warnings, []) |> Enum.join("\n") end

      TestCluster.await(fn -> logged.(b) =~ "applying 4 droplets shared by #{inspect(a.node)}" end)

      # A share of another topology, then the leader's strategy stopping.
      share = %LibclusterDroplet.Share{
        topology: :other,
        from: a.node,
        fingerprint: 1,
        interval: 200,
        seq: 1,
        listed_at: System.system_time(:millisecond),
        droplets: []
      }

      name = LibclusterDroplet.Coordination.registered_name(:droplets)
      TestCluster.call(b, :erlang, :send, [name, hd(LibclusterDroplet.Share.encode(share))])
      TestCluster.call(a, Supervisor, :stop, [sups[a.node]])
      TestCluster.await(fn -> logged.(b) =~ "stopped polling; taking over" end)

      log = logged.(a) <> "\n" <> logged.(b)

      for line <- [
            "found 4 droplets with 1 requests",
            "following #{inspect(a.node)}, which polls the API for this cluster",
            "applying 4 droplets shared by #{inspect(a.node)}",
            "health check of :\"app@#{refused}\" failed: :refused",
            "connecting to :\"app@#{no_node}\" failed",
            "ignoring a share of topology :other from #{inspect(a.node)}",
            "#{inspect(a.node)} stopped polling; taking over"
          ] do
        assert log =~ line
      end

      refute log =~ @token
      Enum.each(listeners, &:gen_tcp.close/1)
    end

    test "is not in the error of a body that reflects it into a field of the wrong type" do
      {:ok, api} = FakeAPI.start_link(token: @token, droplets: droplets())
      half = div(byte_size(@token), 2)
      <<head::binary-size(half), tail::binary>> = @token

      # Padded so that a cut of the parser's message at 240 bytes would
      # split the token; halves, which no redaction of the whole would catch.
      bodies = [
        ~s({"droplets":[{"id":"#{String.duplicate("p", 200)}#{@token}"}],"meta":{"total":1}}),
        ~s({"droplets":[{"id":"#{String.duplicate("p", 190)}#{@token}"}],"meta":{"total":1}}),
        ~s({"droplets":[],"meta":{"total":"#{head}"},"x":"#{tail}"}),
        ~s({"droplets":[{"id":1,"name":"a","status":{"#{tail}":1}}],"meta":{"total":1}}),
        ~s({"droplets":[#{@token}]})
      ]

      for body <- bodies do
        FakeAPI.inject(api, {:raw, body})

        assert {:error, {class, detail} = reason} =
                 LibclusterDroplet.list_droplets(token: @token, api_url: FakeAPI.url(api))

        assert class in [:unexpected_shape, :invalid_json]
        assert detail =~ ~r/ at line \d+ column \d+$/

        shown =
          inspect(reason, limit: :infinity, printable_limit: :infinity) <>
            LibclusterDroplet.Error.format(reason)

        for start <- 0..(byte_size(@token) - 8) do
          refute shown =~ binary_part(@token, start, 8)
        end
      end
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

  describe "token sources" do
    setup do
      dir = Path.join(System.tmp_dir!(), "secrets_token_#{System.unique_integer([:positive])}")
      File.mkdir_p!(dir)
      on_exit(fn -> File.rm_rf!(dir) end)
      {:ok, path: Path.join(dir, "do_token")}
    end

    test "{:file, path}: missing is its own poll failure, nothing is sent, membership stays; " <>
           "written, it is used",
         %{path: path} do
      {:ok, api} = FakeAPI.start_link(token: @token, droplets: droplets())

      log =
        capture_log(fn ->
          {pid, spy} = start_strategy(api, token: {:file, path}, max_backoff: 200)
          TestCluster.await(fn -> :sys.get_state(pid).schedule.failures >= 2 end)
          assert FakeAPI.request_count(api) == 0
          assert SpyMembership.connected(spy) == []

          File.write!(path, @token <> "\n")
          TestCluster.await(fn -> length(SpyMembership.connected(spy)) == 2 end)

          # Gone again: polls fail, the two nodes stay, nobody is disconnected.
          File.rm!(path)
          failed = :sys.get_state(pid).schedule.failures
          TestCluster.await(fn -> :sys.get_state(pid).schedule.failures >= failed + 2 end)
          assert length(SpyMembership.connected(spy)) == 2
          refute Enum.any?(SpyMembership.events(spy), &match?({:disconnect, _}, &1))
        end)

      assert log =~
               "DigitalOcean API poll failed (token_unavailable): the DigitalOcean API token could not be read: " <>
                 "the token file #{path} cannot be read: no such file or directory; keeping the 0 nodes as they are"

      assert log =~ "keeping the 2 nodes as they are"
      refute log =~ @token
    end

    test "{:system, var}: a token rotated in the environment is used from the next poll on" do
      var = "LIBCLUSTER_DROPLET_SECRETS_TEST_TOKEN"
      System.put_env(var, @token)
      on_exit(fn -> System.delete_env(var) end)
      {:ok, api} = FakeAPI.start_link(token: @token, droplets: droplets())
      rotated = String.replace(@token, "SECRET", "ROTATE")

      log =
        capture_log(fn ->
          {pid, spy} = start_strategy(api, token: {:system, var}, max_backoff: 200)
          TestCluster.await(fn -> length(SpyMembership.connected(spy)) == 2 end)

          FakeAPI.set_token(api, rotated)
          TestCluster.await(fn -> :sys.get_state(pid).schedule.failures >= 1 end)
          System.put_env(var, rotated)
          TestCluster.await(fn -> :sys.get_state(pid).schedule.failures == 0 end)
          assert length(SpyMembership.connected(spy)) == 2
        end)

      assert log =~ "(unauthorized)"
      assert log =~ "(token from the environment variable #{var})"
      refute log =~ @token
      refute log =~ rotated
    end

    test "{:file, path}: after a 401 the file is read again, even when its size and time did not change",
         %{path: path} do
      {:ok, api} = FakeAPI.start_link(token: @token, droplets: droplets())
      File.write!(path, @token)
      {:ok, %File.Stat{mtime: mtime}} = File.stat(path, time: :posix)
      rotated = String.replace(@token, "SECRET", "ROTATE")

      capture_log(fn ->
        {pid, spy} = start_strategy(api, token: {:file, path}, max_backoff: 200)
        TestCluster.await(fn -> length(SpyMembership.connected(spy)) == 2 end)

        # Rotated in place: same size, same inode, and the time put back.
        File.write!(path, rotated)
        File.touch!(path, mtime)
        FakeAPI.set_token(api, rotated)

        TestCluster.await(fn ->
          FakeAPI.requests(api) |> Enum.any?(&(&1.status == 401))
        end)

        TestCluster.await(fn -> :sys.get_state(pid).schedule.failures == 0 end)
        assert List.last(FakeAPI.requests(api)).status == 200
      end)
    end
  end

  describe "the NIF boundary" do
    test "a panic inside a NIF call is an Erlang exception, and the VM goes on" do
      assert_raise ErlangError, ~r/nif_panicked/, fn -> Native.debug_panic(:nif, make_ref()) end
      assert Native.nif_version() == Mix.Project.config()[:version]
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
      check = %{kind: :tcp, port: port, timeout_ms: 200}

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
          probe = nif_slot(fn -> Native.probe(addresses, check, 512, ref) end)
          receive do: ({:droplet_nif_probe, ^ref, [_ | _]} -> :ok)

          ref = make_ref()
          longest_probe = nif_slot(fn -> Native.probe(longest, check, 512, ref) end)
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
              match?({:ok, _handle, _concurrency}, result) or
                result == Mix.Project.config()[:version],
              "#{name}: #{inspect(result)}"
            )

      # The least of each call's 5 runs: what the call itself costs. A busy
      # machine only adds to a run (a core shared with another process runs
      # slower); a call that does hold its scheduler holds it every run.
      least =
        calls
        |> Enum.group_by(&elem(&1, 0), fn {_, {_, us}} -> us end)
        |> Map.new(fn {name, us} -> {name, Enum.min(us)} end)

      held = for {name, us} <- least, us >= 1_000, do: {name, us}
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
