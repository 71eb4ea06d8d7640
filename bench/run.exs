# The entry point of `make bench`:
#
#     MIX_ENV=dev mix run --no-start bench/run.exs              # every bench/*_bench.exs
#     MIX_ENV=dev mix run --no-start bench/run.exs poll probes  # bench/poll_bench.exs, then bench/probes_bench.exs
#
# A benchmark is a script named bench/<name>_bench.exs: evaluating it runs
# the benchmark, prints its tables and appends its figures to
# bench/results/<name>.jsonl. They run one after the other in this VM, in
# alphabetical order (or the order given); a failing one is reported and
# the others still run, then the exit status is 1.

defmodule Bench.Runner do
  @moduledoc false

  @bench_dir __DIR__
  @suffix "_bench.exs"

  def main(args) do
    paths = select(args)
    failed = Enum.reject(paths, &run_one/1)

    if failed != [] do
      IO.puts(:stderr, "\nfailed: #{Enum.map_join(failed, ", ", &Path.basename/1)}")
      exit({:shutdown, 1})
    end
  end

  defp available do
    @bench_dir |> Path.join("*" <> @suffix) |> Path.wildcard() |> Enum.sort()
  end

  defp select([]), do: available()

  defp select(names) do
    known = Map.new(available(), &{Path.basename(&1, @suffix), &1})

    case Enum.reject(names, &Map.has_key?(known, &1)) do
      [] ->
        names |> Enum.uniq() |> Enum.map(&Map.fetch!(known, &1))

      unknown ->
        IO.puts(
          :stderr,
          "unknown benchmark(s) #{Enum.join(unknown, ", ")}; known: #{Enum.join(Map.keys(known), ", ")}"
        )

        exit({:shutdown, 2})
    end
  end

  # Each benchmark runs in a process of its own, so a crash in a process it
  # linked to (a server, a worker) ends that benchmark only.
  defp run_one(path) do
    started = System.monotonic_time(:millisecond)
    {pid, ref} = spawn_monitor(fn -> Code.require_file(path) end)

    receive do
      {:DOWN, ^ref, :process, ^pid, reason} ->
        seconds = (System.monotonic_time(:millisecond) - started) / 1000
        report(Path.basename(path), reason, seconds)
    end
  end

  defp report(name, :normal, seconds) do
    IO.puts("\n#{name} done in #{Float.round(seconds, 1)} s")
    true
  end

  defp report(name, reason, seconds) do
    IO.puts(
      :stderr,
      "\n#{name} failed after #{Float.round(seconds, 1)} s: #{Exception.format_exit(reason)}"
    )

    false
  end
end

Bench.Runner.main(System.argv())
