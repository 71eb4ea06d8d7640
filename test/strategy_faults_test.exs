defmodule Cluster.Strategy.DropletFaultsTest do
  @moduledoc false
  # Every fault the API or the network can throw at a running strategy:
  # membership unchanged, the process alive, one warning per failed poll
  # naming the error's class, polling going on, and never the token in any
  # log line or crash report.
  use ExUnit.Case, async: true

  import ExUnit.CaptureLog
  require Logger
  alias LibclusterDroplet.{FakeAPI, SpyMembership, TestCluster}

  @moduletag timeout: 120_000

  @token "dop_v1_FAULTS_f7c1e0a9b8d64c2aa1b2c3d4e5f60718293a4b5c6d7e8f90"
  @interval 100

  defp droplets(n) do
    for i <- 1..n do
      FakeAPI.droplet(
        id: i,
        name: "node-#{i}",
        private_ip: "127.0.3.#{i + 1}",
        public_ip: "127.0.4.#{i + 1}"
      )
    end
  end

  defp nodes(n), do: for(i <- 1..n, do: :"node-#{i}@127.0.3.#{i + 1}")

  # Starts a strategy against `api` with spy membership and waits for its
  # first successful poll.
  defp start_strategy(api, extra \\ []) do
    topology = :"faults_#{System.unique_integer([:positive])}"
    spy = SpyMembership.start()

    config =
      Keyword.merge(
        [
          token: @token,
          api_url: FakeAPI.url(api),
          polling_interval: @interval,
          max_backoff: 400,
          # Ample for every answer but the slow fault's, even on a busy
          # machine: a timeout is a warning of its own.
          api_timeout: 5_000,
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

    TestCluster.await(fn -> SpyMembership.connected(spy) == nodes(3) end)
    %{topology: topology, spy: spy, pid: pid}
  end

  defp failures(pid), do: :sys.get_state(pid).schedule.failures

  # Runs `fault_fun` with the cluster formed, waits for `polls` failed polls,
  # ends the fault with `heal_fun` and waits for a successful poll. Returns
  # the captured log.
  defp ride_out(ctx, fault_fun, heal_fun, polls \\ 3) do
    capture_log(fn ->
      fault_fun.()
      TestCluster.await(fn -> failures(ctx.pid) >= polls end, 20_000)

      assert Process.alive?(ctx.pid)
      assert SpyMembership.connected(ctx.spy) == nodes(3)

      heal_fun.()
      TestCluster.await(fn -> failures(ctx.pid) == 0 end, 20_000)
      # The log line of the last failure can trail the state change.
      Process.sleep(100)
      Logger.flush()
    end)
  end

  # Warning and error lines of this strategy (the info line of its first
  # connections may trail into the capture).
  defp warnings(log, topology) do
    prefix = "[libcluster:#{topology}] "

    log
    |> String.split("\n")
    |> Enum.filter(&(String.contains?(&1, prefix) and not String.contains?(&1, "[info]")))
  end

  defp assert_one_warning_per_failure(log, ctx, classes, failed_polls) do
    lines = warnings(log, ctx.topology)
    assert lines != []

    for line <- lines do
      assert line =~ "DigitalOcean API poll failed (", "unexpected line: #{line}"
      [class] = Regex.run(~r/poll failed \(([a-z_]+)\)/, line, capture: :all_but_first)

      assert String.to_atom(class) in classes,
             "#{class} is not one of #{inspect(classes)}: #{line}"

      assert line =~ "keeping the 3 nodes as they are"
    end

    if failed_polls, do: assert(length(lines) == failed_polls)
    refute log =~ @token
    # Nothing was ever disconnected.
    assert Enum.all?(SpyMembership.events(ctx.spy), &match?({:connect, _}, &1))
  end

  defp failed_requests(api),
    do: api |> FakeAPI.requests() |> Enum.count(&(&1.status != 200 or &1.fault != nil))

  @foreign_host "127.0.0.77"

  faults = [
    {"HTTP 500", {:status, 500}, [:http_status]},
    {"HTTP 502", {:status, 502}, [:http_status]},
    {"HTTP 503", {:status, 503}, [:http_status]},
    {"HTTP 401", {:status, 401}, [:unauthorized]},
    {"HTTP 403", {:status, 403}, [:forbidden]},
    {"HTTP 403 naming the missing scope",
     {:status, 403, "You are missing the required scope: droplet:read"}, [:forbidden]},
    {"HTTP 404", {:status, 404}, [:http_status]},
    {"HTTP 429", {:status, 429}, [:rate_limited]},
    {"a server slower than the timeout", {:slow, 10_000}, [:timeout], 1, api_timeout: 2_000},
    # A reset or a body cut short on the wire is the Rust tests' business
    # (api/wire_tests.rs): here, what the strategy does with the error.
    {"an HTML body", {:raw, "<html><body>502 Bad Gateway</body></html>"}, [:invalid_json]},
    {"JSON cut short", {:raw, ~s({"droplets":[{"id":1,"name":"no)}, [:invalid_json]},
    {"droplets not a list",
     {:json, %{"droplets" => "none", "links" => %{}, "meta" => %{"total" => 1}}},
     [:unexpected_shape]},
    {"an empty droplets list while meta.total > 0", :empty_with_total, [:inconsistent]},
    {"a body over the size cap", :huge, [:body_too_large]},
    # Page 1 whose next link is its own URL: a loop seen before any request.
    {"a next link that loops", :next_loop, [:pagination_loop]}
  ]

  # The faults a module attribute cannot hold (functions, 17 MB).
  defp fault(:empty_with_total), do: {:edit, &Map.put(&1, "droplets", [])}
  defp fault(:huge), do: {:raw, [~s({"padding":"), :binary.copy("x", 17 * 1024 * 1024), ~s("})]}
  defp fault(:next_loop), do: {:edit, &put_in(&1, ["links", "pages"], %{"next" => &2})}
  defp fault(fault), do: fault

  for fault_case <- faults do
    {name, fault, classes, requests_per_poll, config} =
      case fault_case do
        {name, fault, classes} -> {name, fault, classes, 1, []}
        {name, fault, classes, requests_per_poll} -> {name, fault, classes, requests_per_poll, []}
        full -> full
      end

    @requests_per_poll requests_per_poll
    @fault fault
    @classes classes
    @config config
    test "#{name}: membership unchanged, one warning per failure, polling goes on" do
      {:ok, api} = FakeAPI.start_link(token: @token, droplets: droplets(3))
      ctx = start_strategy(api, @config)
      FakeAPI.reset_requests(api)

      log =
        ride_out(ctx, fn -> FakeAPI.inject(api, fault(@fault), times: :infinity) end, fn ->
          FakeAPI.clear_faults(api)
        end)

      assert_one_warning_per_failure(
        log,
        ctx,
        @classes,
        div(failed_requests(api), @requests_per_poll)
      )
    end
  end

  test "a 403 naming the scope says which scope the token lacks, and nothing else it said" do
    {:ok, api} = FakeAPI.start_link(token: @token, droplets: droplets(3))
    ctx = start_strategy(api)
    message = "You are missing the required scope: droplet:read (request by #{@token})"

    log =
      ride_out(
        ctx,
        fn -> FakeAPI.inject(api, {:status, 403, message}, times: :infinity) end,
        fn ->
          FakeAPI.clear_faults(api)
        end
      )

    assert [line | _] = warnings(log, ctx.topology)

    assert line =~
             "(forbidden): the DigitalOcean API refused the request (403 Forbidden): " <>
               "the token lacks the droplet:read scope;"

    refute log =~ "request by"
    refute log =~ @token
  end

  test "droplets listed without vpc_uuid fail the poll when :vpc is set, naming the vpc:read scope" do
    vpc = "760e09ef-dc84-11e8-981e-3cfdfeaae000"
    {:ok, api} = FakeAPI.start_link(token: @token, droplets: droplets(3))
    ctx = start_strategy(api, vpc: vpc)
    :sys.install(ctx.pid, {&report_failures/3, %{test: self(), max: 0}})
    without_vpc = &Map.delete(&1, "vpc_uuid")

    log =
      ride_out(
        ctx,
        fn -> for i <- 1..3, do: FakeAPI.update_droplet(api, i, without_vpc) end,
        fn -> for i <- 1..3, do: FakeAPI.update_droplet(api, i, %{"vpc_uuid" => vpc}) end
      )

    # Every listing went through; each one the filter could not be applied
    # to is a failed poll with its warning, membership untouched. One run
    # of failures: as many warnings as the most failures in a row.
    assert_one_warning_per_failure(log, ctx, [:vpc_unknown], most_failures())
    lines = warnings(log, ctx.topology)

    assert hd(lines) =~
             "(vpc_unknown): the vpc option cannot be applied: 3 of the 3 listed droplets came without vpc_uuid " <>
               "(it needs the token's vpc:read scope"
  end

  test "JSON of the wrong shape: networks missing, ids as strings" do
    {:ok, api} = FakeAPI.start_link(token: @token, droplets: droplets(3))
    ctx = start_strategy(api)
    [good | _] = droplets(3)

    for droplet <- [Map.delete(good, "networks"), Map.put(good, "id", "1")] do
      body = %{"droplets" => [droplet], "links" => %{"pages" => %{}}, "meta" => %{"total" => 1}}
      FakeAPI.reset_requests(api)

      log =
        ride_out(ctx, fn -> FakeAPI.inject(api, {:json, body}, times: :infinity) end, fn ->
          FakeAPI.clear_faults(api)
        end)

      assert_one_warning_per_failure(log, ctx, [:unexpected_shape], failed_requests(api))
    end
  end

  test "connection refused: the API is gone" do
    {:ok, api} = FakeAPI.start_link(token: @token, droplets: droplets(3))
    url = FakeAPI.url(api)
    ctx = start_strategy(api)

    log =
      ride_out(ctx, fn -> FakeAPI.stop(api) end, fn ->
        # Back on the same port.
        %URI{port: port} = URI.parse(url)
        {:ok, _} = FakeAPI.start_link(token: @token, droplets: droplets(3), port: port)
      end)

    assert_one_warning_per_failure(log, ctx, [:transport], nil)
  end

  test "a redirect to another host is refused and nothing is sent there" do
    {foreign, port} = foreign_listener()
    {:ok, api} = FakeAPI.start_link(token: @token, droplets: droplets(3))
    ctx = start_strategy(api)
    FakeAPI.reset_requests(api)
    fault = {:redirect, "http://#{@foreign_host}:#{port}/v2/droplets"}

    log =
      ride_out(ctx, fn -> FakeAPI.inject(api, fault, times: :infinity) end, fn ->
        FakeAPI.clear_faults(api)
      end)

    assert_one_warning_per_failure(log, ctx, [:foreign_redirect], failed_requests(api))
    assert {:error, :timeout} = :gen_tcp.accept(foreign, 100)
  end

  test "a next link to another host, or to another scheme, is refused and nothing is sent there" do
    {foreign, port} = foreign_listener()
    {:ok, api} = FakeAPI.start_link(token: @token, droplets: droplets(3))
    %URI{port: api_port} = URI.parse(FakeAPI.url(api))
    ctx = start_strategy(api)

    for url <- [
          "http://#{@foreign_host}:#{port}/v2/droplets?page=2",
          "https://127.0.0.1:#{api_port}/v2/droplets?page=2",
          "http://127.0.0.1:#{port}/v2/droplets?page=2"
        ] do
      FakeAPI.reset_requests(api)

      foreign_next = {:edit, &put_in(&1, ["links", "pages", "next"], url)}

      log =
        ride_out(ctx, fn -> FakeAPI.inject(api, foreign_next, times: :infinity) end, fn ->
          FakeAPI.clear_faults(api)
        end)

      assert_one_warning_per_failure(log, ctx, [:foreign_link], failed_requests(api))
    end

    assert {:error, :timeout} = :gen_tcp.accept(foreign, 100)
  end

  test "failures back off exponentially with jitter up to the cap; the first success restores the interval" do
    {:ok, api} = FakeAPI.start_link(token: @token, droplets: droplets(3))
    ctx = start_strategy(api, max_backoff: 1_600)
    :sys.install(ctx.pid, {&report_timers/3, %{test: self(), last: nil}})

    # The requests from the first failure on: the failing run, then the rest.
    from_first_failure = fn ->
      api |> FakeAPI.requests() |> Enum.drop_while(&(&1.status == 200))
    end

    log =
      capture_log(fn ->
        FakeAPI.inject(api, {:status, 500}, times: :infinity)
        TestCluster.await(fn -> failures(ctx.pid) >= 7 end, 30_000)
        FakeAPI.clear_faults(api)

        TestCluster.await(
          fn -> from_first_failure.() |> Enum.count(&(&1.status == 200)) >= 5 end,
          10_000
        )

        Logger.flush()
      end)

    # What the strategy decided, from its own words: failure k's warning
    # says when it polls next. Failure k waits in [max(interval, cap_k / 2),
    # cap_k], cap_k = interval * 2^k up to 1600 ms.
    delays =
      for line <- warnings(log, ctx.topology) do
        [ms] = Regex.run(~r/next poll in (\d+) ms/, line, capture: :all_but_first)
        String.to_integer(ms)
      end

    assert length(delays) >= 7

    for {delay, k} <- Enum.with_index(delays, 1) do
      cap = min(1_600, @interval * Integer.pow(2, k))
      assert delay in max(@interval, div(cap, 2))..cap, "delay #{k}: #{delay} ms, cap #{cap}"
    end

    # Jitter: the waits at the cap are drawn, not all the same.
    capped = for {delay, k} <- Enum.with_index(delays, 1), k >= 4, do: delay
    assert length(Enum.uniq(capped)) > 1, "no jitter at the cap: #{inspect(capped)}"

    # And it waited that long: each request after a failure comes at least
    # its delay after the failed one (a busy machine only makes gaps longer).
    {failing, recovered} = Enum.split_while(from_first_failure.(), &(&1.status == 500))
    assert length(failing) == length(delays)
    [first_success | _] = recovered

    for {{failed, next}, delay} <-
          Enum.zip(Enum.zip(failing, tl(failing) ++ [first_success]), delays) do
      assert next.at_ms - failed.at_ms >= delay,
             "polled #{next.at_ms - failed.at_ms} ms after a failure that said #{delay} ms"
    end

    # The first success restores the interval: the timer it set (read inside
    # the strategy as it was set, see report_timers/3) and every one after;
    # the 5th success was sent, so the first 4 were handled.
    after_recovery =
      collect_timers()
      |> Enum.drop_while(fn {failures, _left} -> failures == 0 end)
      |> Enum.drop_while(fn {failures, _left} -> failures > 0 end)

    assert length(after_recovery) >= 4

    # `false`: the timer had already fired when it was read, on a busy machine.
    assert Enum.all?(
             after_recovery,
             &match?({0, left} when left == false or left <= @interval, &1)
           ),
           "after recovery: #{inspect(after_recovery)}"

    success_gaps = recovered |> Enum.map(& &1.at_ms) |> gaps()
    assert Enum.all?(success_gaps, &(&1 >= @interval)), "after recovery: #{inspect(success_gaps)}"
  end

  test "a droplet whose name cannot be a node name is skipped with one warning" do
    good = droplets(3)
    bad = FakeAPI.droplet(id: 99, name: "example.com", private_ip: "127.0.3.99")
    {:ok, api} = FakeAPI.start_link(token: @token, droplets: good ++ [bad])

    log =
      capture_log(fn ->
        ctx = start_strategy(api)
        # Five more polls, each listing the droplet again.
        count = FakeAPI.request_count(api)
        TestCluster.await(fn -> FakeAPI.request_count(api) >= count + 5 end)
        assert SpyMembership.connected(ctx.spy) == nodes(3)
        Logger.flush()
      end)

    skipped = log |> String.split("\n") |> Enum.filter(&(&1 =~ "skipping droplet"))
    assert [line] = skipped

    assert line =~
             ~s(skipping droplet "example.com": "example.com" cannot be the name part of a node name) <>
               " (only ASCII letters, digits, '_' and '-'); set :node_basename"
  end

  test "unknown messages and stale replies are ignored" do
    {:ok, api} = FakeAPI.start_link(token: @token, droplets: droplets(3))
    ctx = start_strategy(api)

    for message <- [
          :garbage,
          {:droplet_nif_list, make_ref(), {:ok, %{droplets: [], total: 0}}, %{}},
          {:droplet_nif_probe, make_ref(), []},
          {:droplet_timer, :tick, make_ref()},
          {:droplet_timer, :poll_watchdog, make_ref()},
          {:droplet_timer, :check_watchdog, make_ref()},
          {make_ref(), :ok},
          {:libcluster_droplet_share, :other_topology, :"a@127.0.0.1", 1, []},
          {:libcluster_droplet_share, 2, :other_topology, %{}},
          {:DOWN, make_ref(), :process, self(), :normal}
        ] do
      send(ctx.pid, message)
    end

    # Handled before this call (sent later by the same process), and
    # polling goes on after them.
    assert %Cluster.Strategy.Droplet{} = :sys.get_state(ctx.pid)
    count = FakeAPI.request_count(api)
    TestCluster.await(fn -> FakeAPI.request_count(api) >= count + 3 end)
    assert Process.alive?(ctx.pid)
    assert SpyMembership.connected(ctx.spy) == nodes(3)
    assert Enum.all?(SpyMembership.events(ctx.spy), &match?({:connect, _}, &1))
  end

  describe "rate limits" do
    test "after a 429 nothing is sent before its retry-after has passed" do
      {:ok, api} = FakeAPI.start_link(token: @token, droplets: droplets(3))
      ctx = start_strategy(api)

      capture_log(fn ->
        FakeAPI.set_rate_limit(api, per_minute: 3, minute_ms: 2_000)
        FakeAPI.reset_requests(api)

        TestCluster.await(
          fn -> Enum.count(FakeAPI.requests(api), &(&1.status == 429)) >= 2 end,
          40_000
        )

        TestCluster.await(fn -> length(FakeAPI.requests(api)) >= 12 end, 40_000)
      end)

      requests = FakeAPI.requests(api)
      # Every 429 but maybe the last has a successor: polling resumed.
      throttled =
        for t <- requests,
            t.status == 429,
            next = Enum.find(requests, &(&1.unix_ms > t.unix_ms)),
            do: {t, next}

      assert length(throttled) >= 2

      for {t, next} <- throttled do
        retry_after = String.to_integer(t.headers["retry-after"])
        assert retry_after >= 1

        assert next.unix_ms - t.unix_ms >= retry_after * 1000 - 20,
               "sent #{next.unix_ms - t.unix_ms} ms after a 429 saying #{retry_after} s"
      end

      assert SpyMembership.connected(ctx.spy) == nodes(3)
    end

    test "when ratelimit-remaining reaches 0, nothing is sent before ratelimit-reset, and no 429 is drawn" do
      {:ok, api} = FakeAPI.start_link(token: @token, droplets: droplets(3))
      ctx = start_strategy(api)

      capture_log(fn ->
        FakeAPI.set_rate_limit(api, per_hour: 4, hour_ms: 3_000)
        FakeAPI.reset_requests(api)
        TestCluster.await(fn -> length(FakeAPI.requests(api)) >= 10 end, 30_000)
      end)

      requests = FakeAPI.requests(api)
      exhausted = Enum.filter(requests, &(&1.headers["ratelimit-remaining"] == "0"))
      assert exhausted != []

      assert Enum.all?(requests, &(&1.status == 200)),
             "a 429 was drawn: #{inspect(Enum.map(requests, & &1.status))}"

      # (How many requests came after the 10th depends on the machine's
      # speed: the last one logged may be one that left nothing, with no
      # successor to check.)
      for t <- exhausted,
          next = Enum.find(requests, &(&1.unix_ms > t.unix_ms)) do
        reset_ms = String.to_integer(t.headers["ratelimit-reset"]) * 1000

        assert next.unix_ms >= reset_ms - 20,
               "sent #{reset_ms - next.unix_ms} ms before the reset"
      end

      assert SpyMembership.connected(ctx.spy) == nodes(3)
    end
  end

  @doc false
  # A `:sys` debug function for the strategy: each time a callback returns
  # a state holding a new poll timer, it sends the test `{:timer, failures,
  # ms_left}`, read inside the strategy right after the timer was set: the
  # delay it just chose (less the moment since). Its state is a map: OTP 25's
  # `sys` silently dropped this function when it returned a two-element tuple.
  def report_timers(
        %{last: last} = acc,
        {:noreply, %{timers: %{tick: {_ref, timer}}, schedule: %{failures: failures}}},
        _name
      )
      when is_reference(timer) and timer != last do
    send(acc.test, {:timer, failures, Process.read_timer(timer)})
    %{acc | last: timer}
  end

  def report_timers(acc, _event, _name), do: acc

  @doc false
  # A `:sys` debug function for the strategy: sends the test
  # `{:failures, n}` each time its consecutive failures reach a new high.
  def report_failures(%{max: max} = acc, {:noreply, %{schedule: %{failures: failures}}}, _name)
      when failures > max do
    send(acc.test, {:failures, failures})
    %{acc | max: failures}
  end

  def report_failures(acc, _event, _name), do: acc

  defp most_failures(most \\ 0) do
    receive do
      {:failures, n} -> most_failures(max(n, most))
    after
      0 -> most
    end
  end

  defp collect_timers(acc \\ []) do
    receive do
      {:timer, failures, left} -> collect_timers([{failures, left} | acc])
    after
      0 -> Enum.reverse(acc)
    end
  end

  defp gaps(times),
    do: times |> Enum.chunk_every(2, 1, :discard) |> Enum.map(fn [a, b] -> b - a end)

  # A listener on another loopback host that must never see a connection.
  defp foreign_listener do
    {:ok, ip} = :inet.parse_address(String.to_charlist(@foreign_host))
    {:ok, listener} = :gen_tcp.listen(0, ip: ip, active: false)
    {:ok, port} = :inet.port(listener)
    {listener, port}
  end
end
