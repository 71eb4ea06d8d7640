# Poll cost: what listing the droplets costs at 100, 1,000 and 10,000
# droplets against the fake DigitalOcean API on loopback. Run with
# `make bench` or `MIX_ENV=dev mix run --no-start bench/run.exs poll`.
Code.require_file("support/bench_helper.exs", __DIR__)
Code.require_file("support/raw_http.exs", __DIR__)
Code.require_file("support/fake_droplets.exs", __DIR__)
Code.require_file("support/poll_memory.exs", __DIR__)

defmodule Bench.Poll do
  @moduledoc false
  # Measured per droplet count:
  #   * our poll, LibclusterDroplet.list_droplets/1 with its defaults
  #     (per_page=200, pages 2..N 4 at a time): requests, wall time, CPU;
  #   * the fake server's own time for the same pages (Bench.RawHTTP);
  #   * the original strategy's paging: per_page=20 (it never sets it, and
  #     the API's default is 20), one page after the other;
  #   * one page at a time with per_page=200, against our 4 at a time;
  # and the memory of a 10,000-droplet poll (Bench.PollMemory).

  alias Bench.{FakeDroplets, Helper, PollMemory, RawHTTP}
  alias LibclusterDroplet.FakeAPI

  @sizes [100, 1_000, 10_000]
  @runs 7
  # Polls per run, so that a run lasts 100 ms or more: Linux counts CPU time
  # in 10 ms ticks. CPU per poll is a run's CPU divided by its polls.
  @polls_per_run %{100 => 100, 1_000 => 30, 10_000 => 4}
  # list_droplets/1's defaults, which the strategy uses.
  @per_page 200
  @page_concurrency 4
  # The fake API's default page size, as DigitalOcean's.
  @original_per_page 20
  @memory_size 10_000
  @memory_runs 5
  @overhead_target_ms 50
  @overhead_target_size 1_000

  def run do
    Helper.header("poll cost: LibclusterDroplet.list_droplets/1 against the fake API", params())
    api = FakeDroplets.start_api()

    try do
      results = Enum.map(@sizes, &measure_size(api, &1))
      memory = measure_memory(api)
      report(results, memory)
    after
      FakeAPI.stop(api)
    end
  end

  defp params do
    [
      droplets: Enum.map_join(@sizes, ", ", &Helper.int/1),
      "our client":
        "per_page=#{@per_page}, page 1 then pages 2..N #{@page_concurrency} at a time",
      "original paging": "per_page=#{@original_per_page} (the API default), one page at a time",
      "fake API": "HTTP/1.1 on 127.0.0.1, in this VM, rate limits lifted",
      runs:
        "1 warm-up + #{@runs} runs; a run is " <>
          Enum.map_join(@sizes, ", ", &"#{@polls_per_run[&1]} polls at #{Helper.int(&1)}") <>
          "; wall time: median of every poll; CPU: median over runs of (run CPU / polls)",
      memory:
        "#{Helper.int(@memory_size)} droplets: #{@memory_runs} polls after a warm-up in this VM " <>
          "(warm), and the first poll of #{@memory_runs} fresh VMs (cold)"
    ]
  end

  # ------------------------------------------------------------ measurements

  defp measure_size(api, size) do
    FakeDroplets.put(api, size)
    polls = @polls_per_run[size]
    IO.puts("measuring #{Helper.int(size)} droplets ...")

    %{
      size: size,
      pages: pages(size, @per_page),
      ours: measure_polls(api, size, polls, per_page: @per_page),
      server: measure_server(api, size, polls),
      original:
        measure_polls(api, size, polls, per_page: @original_per_page, page_concurrency: 1),
      one_at_a_time:
        if(pages(size, @per_page) > 1,
          do: measure_polls(api, size, polls, per_page: @per_page, page_concurrency: 1)
        )
    }
  end

  defp pages(size, per_page), do: div(size + per_page - 1, per_page)

  defp measure_polls(api, size, polls, opts) do
    list_opts = FakeDroplets.list_opts(api, opts)
    runs = Helper.warm_runs(@runs, fn -> poll_run(api, size, polls, list_opts) end)

    %{
      requests_per_poll: runs |> Enum.map(&(&1.requests / polls)) |> Helper.median(),
      per_page_sent: runs |> Enum.flat_map(& &1.per_page_sent) |> Enum.uniq(),
      wall_us: walls_summary(Enum.flat_map(runs, & &1.walls)),
      cpu_ms:
        Map.new([:total, :user, :sys, :vm, :nif, :runtime], fn key ->
          {key, runs |> Enum.map(&(&1.cpu[key] / polls)) |> Helper.median()}
        end)
    }
  end

  # One run: `polls` polls back to back, CPU time taken around all of them,
  # requests counted by the server.
  defp poll_run(api, size, polls, list_opts) do
    FakeAPI.reset_requests(api)
    before = Helper.cpu_snapshot()
    walls = for _ <- 1..polls, do: timed_poll(size, list_opts)
    cpu = Helper.cpu_delta(before, Helper.cpu_snapshot())
    requests = FakeAPI.requests(api)

    %{
      walls: walls,
      cpu: cpu,
      requests: length(requests),
      per_page_sent: requests |> Enum.map(& &1.query["per_page"]) |> Enum.uniq()
    }
  end

  defp timed_poll(size, list_opts) do
    {us, result} = Helper.time_us(fn -> LibclusterDroplet.list_droplets(list_opts) end)
    {:ok, %{droplets: droplets}} = result
    if length(droplets) != size, do: raise("listed #{length(droplets)} of #{size} droplets")
    us
  end

  defp walls_summary(walls),
    do: %{median: Helper.median(walls), min: Enum.min(walls), max: Enum.max(walls)}

  # The same pages as our poll, fetched the same way by the bare client.
  defp measure_server(api, size, polls) do
    pool = RawHTTP.start_pool(FakeAPI.url(api), FakeDroplets.token(), @page_concurrency)

    [first | rest] =
      for page <- 1..pages(size, @per_page), do: "/v2/droplets?page=#{page}&per_page=#{@per_page}"

    fetch = fn -> RawHTTP.get_all([hd(pool)], [first]) + RawHTTP.get_all(pool, rest) end

    try do
      runs = Helper.warm_runs(@runs, fn -> for _ <- 1..polls, do: Helper.time_us(fetch) end)
      samples = List.flatten(runs)

      %{
        wall_us: walls_summary(Enum.map(samples, &elem(&1, 0))),
        bytes: samples |> hd() |> elem(1)
      }
    after
      RawHTTP.stop_pool(pool)
    end
  end

  defp measure_memory(api) do
    IO.puts("measuring memory at #{Helper.int(@memory_size)} droplets ...")
    FakeDroplets.put(api, @memory_size)
    list_opts = FakeDroplets.list_opts(api)
    warm = Helper.warm_runs(@memory_runs, fn -> PollMemory.run_once(list_opts) end)
    cold = for _ <- 1..@memory_runs, do: PollMemory.cold_run(@memory_size)
    %{warm: PollMemory.summarize(warm), cold: PollMemory.summarize(cold)}
  end

  # ----------------------------------------------------------------- report

  defp report(results, memory) do
    print_cost(results)
    print_overhead(results)
    print_original(results)
    print_concurrency(results)
    print_memory(memory)
    Helper.write_results("poll", %{params: Map.new(params()), sizes: results, memory: memory})
  end

  defp print_cost(results) do
    Helper.section(
      "cost of one poll (ours: per_page=#{@per_page}, #{@page_concurrency} pages at a time)"
    )

    rows =
      for r <- results do
        cpu = r.ours.cpu_ms

        [
          Helper.int(r.size),
          Helper.num(r.ours.requests_per_poll, 0),
          "#{r.pages} #{Helper.verdict(r.ours.requests_per_poll == r.pages)}",
          Enum.join(r.ours.per_page_sent, ","),
          Helper.ms(r.ours.wall_us.median),
          Helper.num(cpu.total, 2),
          Helper.num(cpu.nif, 2),
          Helper.num(cpu.vm, 2),
          Helper.num(cpu.runtime, 2),
          Helper.mib(r.server.bytes)
        ]
      end

    Helper.table(
      [
        "droplets",
        "requests",
        "expected",
        "per_page sent",
        "wall ms",
        "CPU ms",
        "NIF thr.",
        "VM thr.",
        "utime ms",
        "JSON/poll"
      ],
      rows
    )

    IO.puts("""
    CPU ms: user+system of the whole OS process (/proc/self/stat) per poll, split into
      NIF thr.: the threads the NIF starts for the call (our client: HTTP, JSON, the reply term)
      VM thr.:  the VM's own threads: the fake API server (same VM), the Elixir side, idle spinning
    utime ms: :erlang.statistics(:runtime), which on Linux is the process's user time only
      (NIF threads included, system time not)\
    """)
  end

  defp print_overhead(results) do
    Helper.section("our poll time against the fake server's own time for the same pages")

    rows =
      for r <- results do
        [
          Helper.int(r.size),
          Helper.ms(r.ours.wall_us.median),
          Helper.ms(r.server.wall_us.median),
          Helper.ms(overhead_us(r))
        ]
      end

    Helper.table(["droplets", "our poll ms", "server-only ms", "poll - server ms"], rows)
    target = Enum.find(results, &(&1.size == @overhead_target_size))
    beyond = overhead_us(target) / 1000

    IO.puts("""
    server-only: the same GETs (page 1, then pages 2..N #{@page_concurrency} at a time on kept-alive
      connections) by a bare :gen_tcp client that reads each body by Content-Length, never parses it
    target: a #{Helper.int(@overhead_target_size)}-droplet poll under #{@overhead_target_ms} ms beyond \
    the server's own time: #{Helper.num(beyond, 2)} ms, \
    #{Helper.verdict(beyond < @overhead_target_ms)}\
    """)
  end

  defp overhead_us(r), do: r.ours.wall_us.median - r.server.wall_us.median

  defp print_original(results) do
    Helper.section(
      "ours against the original paging (per_page=#{@original_per_page}, one page at a time)"
    )

    rows =
      for r <- results do
        [
          Helper.int(r.size),
          Helper.num(r.ours.requests_per_poll, 0),
          Helper.ms(r.ours.wall_us.median),
          Helper.num(r.original.requests_per_poll, 0),
          Helper.ms(r.original.wall_us.median),
          Helper.num(r.original.requests_per_poll / r.ours.requests_per_poll, 1) <> "x",
          Helper.num(r.original.wall_us.median / r.ours.wall_us.median, 1) <> "x"
        ]
      end

    Helper.table(
      [
        "droplets",
        "ours: requests",
        "ours: ms",
        "original: requests",
        "original: ms",
        "fewer requests",
        "faster"
      ],
      rows
    )

    IO.puts("""
    original: emulated with list_droplets(per_page: #{@original_per_page}, page_concurrency: 1) \
    (same client,
      same connection reuse), so the difference is the paging alone\
    """)
  end

  defp print_concurrency(results) do
    Helper.section(
      "concurrent pagination: #{@page_concurrency} pages at a time against one at a time (per_page=#{@per_page})"
    )

    rows =
      for r <- results, r.one_at_a_time do
        [
          Helper.int(r.size),
          Helper.int(r.pages),
          Helper.ms(r.ours.wall_us.median),
          Helper.ms(r.one_at_a_time.wall_us.median),
          Helper.num(r.one_at_a_time.wall_us.median / r.ours.wall_us.median, 2) <> "x"
        ]
      end

    Helper.table(
      ["droplets", "pages", "#{@page_concurrency} at a time ms", "1 at a time ms", "speed-up"],
      rows
    )

    IO.puts("""
    the machine has #{Helper.machine().nproc} cores, shared by the fake server, the NIF's page \
    threads and the VM\
    """)
  end

  defp print_memory(memory) do
    Helper.section(
      "memory of a #{Helper.int(@memory_size)}-droplet poll, over the baseline just before it"
    )

    rows = [
      ["VM peak (:erlang.memory(:total), sampled every 1 ms)", :vm_peak, &Helper.mib/1],
      ["OS peak RSS (VmHWM, reset before the poll)", :rss_peak, &Helper.mib/1],
      ["RSS still held after the poll (its process gone)", :rss_kept, &Helper.mib/1],
      ["the listing as an Elixir term (flat size)", :term_bytes, &Helper.mib/1],
      ["memory samples taken during the poll", :samples, &Helper.int/1],
      ["poll wall time, ms", :wall_us, &Helper.ms/1]
    ]

    Helper.table(
      ["measure", "warm: median", "(min..max)", "cold: median", "(min..max)"],
      for [label, key, format] <- rows do
        [label | memory_cells(memory.warm[key], format) ++ memory_cells(memory.cold[key], format)]
      end
    )

    IO.puts("""
    warm: a VM that has polled before (the strategy's steady state); freed memory stays with the
      allocators and is reused, so this is what a poll adds. cold: the first poll of a fresh VM.
    VM peak: everything the VM allocates meanwhile, the fake server's work included (it runs in
      this VM); the NIF's own buffers (response bodies, parsed pages) are outside it and show
      only in the OS RSS\
    """)
  end

  defp memory_cells(nil, _format), do: ["n/a", ""]

  defp memory_cells(s, format),
    do: [format.(round(s.median)), "(#{format.(s.min)}..#{format.(s.max)})"]
end

Bench.Poll.run()
