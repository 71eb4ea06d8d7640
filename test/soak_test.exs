defmodule LibclusterDroplet.SoakTest do
  @moduledoc false
  # The short soak (the long one is `make bench`, bench/soak_bench.exs).
  use ExUnit.Case, async: true

  alias LibclusterDroplet.Soak

  @moduletag :soak
  @moduletag timeout: 180_000

  test "3 nodes under a fault-cycling API: nobody drops out, processes, memory and atoms stay flat" do
    report =
      Soak.run(
        duration: 12_000,
        nodes: 3,
        polling_interval: 100,
        fault_ms: 200,
        new_droplet_every: 1
      )

    assert report.nodedowns == [], "healthy nodes dropped out: #{inspect(report.nodedowns)}"
    assert report.full_mesh
    # The strategies kept polling: the bound is their own limits, not how
    # fast polls usually come. A poller waits at most 1 s between polls (a
    # 429's retry-after; backoff stops at 4 × 100 ms) and a poll lasts at most
    # its deadline, 3 × api_timeout = 900 ms: at least one request per 1.9 s.
    assert report.requests >= div(report.duration_ms, 1_900),
           "#{report.requests} requests in #{report.duration_ms} ms"

    assert report.new_droplet_names >= 1

    for {before, after_} <- Enum.zip(report.before, report.after) do
      assert after_.processes <= before.processes + 2,
             "processes: #{before.processes} -> #{after_.processes}"

      # Memory is flat up to allocator noise.
      assert after_.memory <= before.memory * 1.15 + 2_000_000,
             "memory: #{before.memory} -> #{after_.memory}"

      # One atom per genuinely new droplet name (its node name), nothing else.
      assert after_.atoms - before.atoms <= report.new_droplet_names,
             "atoms: #{before.atoms} -> #{after_.atoms} with #{report.new_droplet_names} new droplet names " <>
               "(modules loaded: #{before.modules} -> #{after_.modules})"
    end
  end
end
