# The long soak: 3 real nodes clustered through the strategy while the fake
# API cycles through every fault of the reliability suite, for minutes.
# `make test` runs a 12 s version (test/soak_test.exs). Set SOAK_SECONDS to
# change the duration (default 180). Run with `make bench` or
# `MIX_ENV=dev mix run --no-start bench/run.exs soak`.
Code.require_file("support/bench_helper.exs", __DIR__)

defmodule Bench.Soak do
  @moduledoc false

  alias Bench.Helper
  alias LibclusterDroplet.Soak

  def run do
    seconds = String.to_integer(System.get_env("SOAK_SECONDS", "180"))
    nodes = 3

    Helper.header("soak: real nodes under an API cycling through every fault", %{
      "duration" => "#{seconds} s",
      "nodes" => nodes,
      "polling_interval" => "100 ms",
      "faults per cycle" => "#{length(Soak.faults())}, each for 300 ms then 150 ms clean",
      "new droplet names" => "one per cycle, with no node behind it"
    })

    report =
      Soak.run(
        duration: seconds * 1000,
        nodes: nodes,
        polling_interval: 100,
        new_droplet_every: 1
      )

    Helper.section("result")

    IO.puts("""
    API requests:        #{Helper.int(report.requests)} over #{Helper.num(report.duration_ms / 1000, 1)} s
    healthy nodedowns:   #{length(report.nodedowns)} (#{Helper.verdict(report.nodedowns == [])})
    full mesh at the end: #{report.full_mesh}
    new droplet names:   #{report.new_droplet_names}
    """)

    rows =
      for {{before, after_}, i} <- Enum.with_index(Enum.zip(report.before, report.after), 1) do
        [
          "node #{i}",
          "#{before.processes} → #{after_.processes}",
          "#{Helper.mib(before.memory)} → #{Helper.mib(after_.memory)}",
          "#{Helper.int(before.atoms)} → #{Helper.int(after_.atoms)} (+#{after_.atoms - before.atoms})"
        ]
      end

    Helper.table(["node", "processes", "memory", "atoms"], rows)

    flat? =
      Enum.all?(Enum.zip(report.before, report.after), fn {b, a} ->
        a.processes <= b.processes + 2 and a.atoms - b.atoms <= report.new_droplet_names and
          a.memory <= b.memory * 1.15 + 2_000_000
      end)

    IO.puts(
      "\nflat (processes ±2, memory within 15% + 2 MB, atoms ≤ new names): #{Helper.verdict(flat?)}"
    )

    Helper.write_results("soak", report)
  end
end

Bench.Soak.run()
