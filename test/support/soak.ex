defmodule LibclusterDroplet.Soak do
  @moduledoc """
  A soak run: real nodes clustered through the strategy while the fake API
  cycles through every fault it can throw, for many polls. Shared by the
  short soak test in `make test` and the long one in `bench/`.

  It reports what must stay flat: nodedowns of healthy nodes (must be none),
  each node's process count, memory and atom count before and after, and
  how many genuinely new droplet names appeared meanwhile (the only thing
  allowed to grow the atom table).
  """

  alias LibclusterDroplet.{FakeAPI, TestCluster}
  alias LibclusterDroplet.TestCluster.Remote

  @token "dop_v1_soak_token"

  @doc """
  Every fault of the reliability suite, in the order the soak cycles through
  them: error statuses, a slow answer, HTML, cut JSON, wrong shapes, an empty
  page with a total, a body over the size cap, a foreign redirect and next
  link, a next link to the page itself. (Wire-level faults, resets and
  truncated bodies, are the Rust tests' business.)
  """
  @spec faults() :: [FakeAPI.fault()]
  def faults do
    [
      {:status, 500},
      {:status, 502},
      {:status, 503},
      {:status, 401},
      {:status, 403},
      {:status, 404},
      {:slow, 600},
      {:raw, "<html><body><h1>502 Bad Gateway</h1></body></html>"},
      {:raw, ~s({"droplets":[{"id":1,"name":"x)},
      {:json, %{"droplets" => "none", "links" => %{}, "meta" => %{"total" => 1}}},
      {:json, %{"droplets" => [%{"id" => "1", "name" => "x"}], "meta" => %{"total" => 1}}},
      {:json, %{"droplets" => [], "links" => %{}, "meta" => %{"total" => 1}}},
      {:raw, [~s({"droplets":[],"padding":"), :binary.copy("x", 17 * 1024 * 1024), ~s("})]},
      {:redirect, "http://127.0.0.99:9/v2/droplets"},
      {:edit, &put_in(&1, ["links", "pages"], %{"next" => "http://127.0.0.99:9/v2/droplets"})},
      {:edit, fn page, url -> put_in(page, ["links", "pages"], %{"next" => url}) end},
      {:status, 429}
    ]
  end

  @doc """
  Runs a soak and returns its report.

  Options: `:duration` (ms, default 15_000), `:nodes` (default 3),
  `:polling_interval` (default 100), `:new_droplet_every` (add a droplet
  with a new name, and no node behind it, every that many fault cycles;
  default 5), `:fault_ms` (how long each fault lasts; default 300).
  """
  @spec run(keyword()) :: map()
  def run(opts \\ []) do
    duration = Keyword.get(opts, :duration, 15_000)
    count = Keyword.get(opts, :nodes, 3)
    interval = Keyword.get(opts, :polling_interval, 100)
    prefix = "soak#{System.unique_integer([:positive])}"

    {:ok, api} = FakeAPI.start_link(token: @token)
    addresses = TestCluster.allocate_addresses(count)

    droplets =
      for {address, i} <- Enum.with_index(addresses, 1),
          do: FakeAPI.droplet(id: i, name: "#{prefix}-#{i}", private_ip: address, tags: ["soak"])

    FakeAPI.put_droplets(api, droplets)

    nodes =
      for d <- droplets,
          do: TestCluster.start_node(d["name"], hd(d["networks"]["v4"])["ip_address"])

    config = [
      token: @token,
      api_url: FakeAPI.url(api),
      tag_name: "soak",
      polling_interval: interval,
      max_backoff: 4 * interval,
      api_timeout: 300,
      max_requests_per_minute: 60_000
    ]

    try do
      Enum.each(nodes, &TestCluster.start_strategy(&1, :soak, config))
      TestCluster.await(fn -> TestCluster.full_mesh?(nodes) end, 20_000)
      Enum.each(nodes, &TestCluster.call(&1, Remote, :start_nodedown_recorder, []))

      # Warm up through every fault and a droplet with no node behind it
      # (connect failures) once, so that code loaded and atoms created on
      # first use are in place before the baseline is taken.
      add_unreachable_droplet(api, prefix, 0)
      Enum.each(nodes, &TestCluster.call(&1, Remote, :preload_code, [], 60_000))
      cycle(api, faults(), Keyword.get(opts, :fault_ms, 300))
      settle(interval)
      Enum.each(nodes, &stats/1)
      before = Enum.map(nodes, &stats/1)
      requests_before = FakeAPI.request_count(api)

      started = System.monotonic_time(:millisecond)
      new_names = soak(api, prefix, started + duration, opts, 0, 0)
      settle(interval)
      # Connects to the dead droplets end within their own timeout (30 s);
      # on a busy machine some are still running after the settle.
      processes_back(nodes, before, System.monotonic_time(:millisecond) + 40_000)

      after_ = Enum.map(nodes, &stats/1)

      %{
        duration_ms: System.monotonic_time(:millisecond) - started,
        nodes: count,
        requests: FakeAPI.request_count(api) - requests_before,
        faults_per_cycle: length(faults()),
        new_droplet_names: new_names,
        nodedowns: Enum.flat_map(nodes, &TestCluster.call(&1, Remote, :nodedowns, [])),
        full_mesh: TestCluster.full_mesh?(nodes),
        before: before,
        after: after_
      }
    after
      Enum.each(nodes, &TestCluster.stop/1)
      FakeAPI.stop(api)
    end
  end

  defp soak(api, prefix, deadline, opts, cycles, new_names) do
    if System.monotonic_time(:millisecond) >= deadline do
      new_names
    else
      cycle(api, faults(), Keyword.get(opts, :fault_ms, 300))
      every = Keyword.get(opts, :new_droplet_every, 5)

      new_names =
        if rem(cycles + 1, every) == 0 do
          # A droplet nobody runs a node on: its name is new, its address dead.
          id = 10_000 + cycles
          [address] = TestCluster.allocate_addresses(1)

          FakeAPI.add_droplet(
            api,
            FakeAPI.droplet(
              id: id,
              name: "#{prefix}-new-#{id}",
              private_ip: address,
              tags: ["soak"]
            )
          )

          new_names + 1
        else
          new_names
        end

      soak(api, prefix, deadline, opts, cycles + 1, new_names)
    end
  end

  # A droplet nobody runs a node on: its name is new, its address dead.
  defp add_unreachable_droplet(api, prefix, n) do
    id = 10_000 + n
    [address] = TestCluster.allocate_addresses(1)

    droplet =
      FakeAPI.droplet(id: id, name: "#{prefix}-new-#{id}", private_ip: address, tags: ["soak"])

    FakeAPI.add_droplet(api, droplet)
  end

  # Each fault for `fault_ms`, then a clean stretch of the same length.
  defp cycle(api, faults, fault_ms) do
    for fault <- faults do
      FakeAPI.inject(api, fault, times: :infinity)
      Process.sleep(fault_ms)
      FakeAPI.clear_faults(api)
      Process.sleep(div(fault_ms, 2))
    end
  end

  defp settle(interval), do: Process.sleep(10 * interval + 1_500)

  # Until every node is back within 2 processes of its baseline, or the
  # deadline: the caller's assertion then says by how much it is not.
  defp processes_back(nodes, before, deadline) do
    counts = Enum.map(nodes, &TestCluster.call(&1, :erlang, :system_info, [:process_count]))
    back? = Enum.zip(counts, before) |> Enum.all?(fn {n, b} -> n <= b.processes + 2 end)

    unless back? or System.monotonic_time(:millisecond) > deadline do
      Process.sleep(200)
      processes_back(nodes, before, deadline)
    end
  end

  defp stats(node) do
    # Collect garbage everywhere first: memory is compared, not allocation noise.
    TestCluster.call(node, :erlang, :garbage_collect, [])

    for pid <- TestCluster.call(node, :erlang, :processes, []) do
      TestCluster.call(node, :erlang, :garbage_collect, [pid])
    end

    TestCluster.call(node, Remote, :vm_stats, [])
    |> Map.put(:modules, length(TestCluster.call(node, :code, :all_loaded, [])))
  end
end
