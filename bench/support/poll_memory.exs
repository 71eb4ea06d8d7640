defmodule Bench.PollMemory do
  @moduledoc false
  # The memory one poll needs, over the baseline just before it: the VM's
  # allocators (:erlang.memory(:total) sampled every 1 ms) and the kernel's
  # peak resident set (VmHWM, reset before the poll), which also sees the
  # NIF's own allocations (response bodies, parsed pages) that
  # :erlang.memory/1 does not.
  #
  # In a VM that has polled before, freed memory stays with the allocators
  # (the VM's carriers, malloc's arenas) and is reused, so the peak RSS over
  # the baseline is what a poll adds in steady state. The first poll of a
  # fresh VM shows the whole footprint: `cold_run/1` runs one in a child VM.

  alias Bench.{FakeDroplets, Helper}

  @keys [:vm_peak, :rss_peak, :rss_kept, :term_bytes, :samples, :wall_us]

  @doc "One measured poll with `list_opts`; a map of the figures in `@keys`."
  def run_once(list_opts) do
    :erlang.garbage_collect()
    baseline = :erlang.memory(:total)
    rss_before = Helper.proc_status(["VmRSS"])["VmRSS"]
    hwm_reset = Helper.reset_peak_rss()
    sampler = Helper.start_memory_sampler(1)
    {us, term_bytes} = Helper.time_us(fn -> poll_in_own_process(list_opts) end)
    %{peak: peak, samples: samples} = Helper.stop_memory_sampler(sampler)
    status = Helper.proc_status(["VmHWM", "VmRSS"])

    %{
      vm_peak: peak - baseline,
      # Without a reset, VmHWM is the peak of the whole life of the process.
      rss_peak: if(hwm_reset == :ok, do: status["VmHWM"] - rss_before),
      rss_kept: status["VmRSS"] - rss_before,
      term_bytes: term_bytes,
      samples: samples,
      wall_us: us
    }
  end

  # In a process of its own that exits afterwards, so the listing it
  # received is freed and every run starts from the same baseline.
  defp poll_in_own_process(list_opts) do
    fn ->
      {:ok, listing} = LibclusterDroplet.list_droplets(list_opts)
      :erts_debug.flat_size(listing.droplets) * :erlang.system_info(:wordsize)
    end
    |> Task.async()
    |> Task.await(60_000)
  end

  @doc "Median, min and max of each figure over `runs` (nil when one is missing)."
  def summarize(runs) do
    Map.new(@keys, fn key ->
      values = Enum.map(runs, &Map.get(&1, key))

      {key,
       if(Enum.all?(values, &is_number/1),
         do: %{median: Helper.median(values), min: Enum.min(values), max: Enum.max(values)}
       )}
    end)
  end

  @doc """
  The first poll of `size` droplets in a fresh VM (this project's compiled
  code and its runtime dependencies', no Mix): started with `elixir`, it
  prints its figures as JSON.
  """
  def cold_run(size) do
    paths =
      for app <- [:libcluster_droplet, :jason, :nimble_options],
          do: ["-pa", Path.join(:code.lib_dir(app), "ebin")]

    child = Path.join(__DIR__, "poll_memory_cold.exs")

    {out, 0} =
      System.cmd(System.find_executable("elixir"), List.flatten(paths) ++ [child, "#{size}"])

    json = out |> String.split("\n", trim: true) |> List.last()
    Map.new(Jason.decode!(json), fn {k, v} -> {String.to_atom(k), v} end)
  end

  @doc "The body of the child VM of `cold_run/1`."
  def cold_child(size) do
    api = FakeDroplets.start_api()
    FakeDroplets.put(api, size)
    result = run_once(FakeDroplets.list_opts(api))
    IO.puts(Jason.encode!(result))
  end
end
