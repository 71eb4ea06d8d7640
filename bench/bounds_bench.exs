# Listing bounds: the peak memory of hostile listings next to normal ones,
# each the first listing of a fresh VM. Run with `make bench BENCH=bounds`.
Code.require_file("support/bench_helper.exs", __DIR__)
Code.require_file("support/fake_droplets.exs", __DIR__)
Code.require_file("support/hostile_listing.exs", __DIR__)

defmodule Bench.Bounds do
  @moduledoc false
  alias Bench.{Helper, HostileListing}

  def run do
    Helper.header("listing bounds: peak memory of hostile listings against normal ones",
      listing: "LibclusterDroplet.list_droplets/1, its defaults unless said otherwise",
      defaults:
        "max_body_bytes 4 MiB, max_listing_bytes 32 MiB, max_string_bytes 1,024, " <>
          "max_tags_per_droplet 1,000, max_addresses_per_droplet 64",
      measure:
        "each the first listing of a fresh VM; peak RSS is the VM's VmHWM, " <>
          "reset just before the listing; before is VmRSS then"
    )

    rows =
      for {{name, _pages, _opts}, index} <- Enum.with_index(HostileListing.scenarios()) do
        IO.puts("running: #{name}")
        figures = HostileListing.cold_run(index)
        Map.put(figures, :name, name)
      end

    Helper.table(
      ["listing", "answer", "VM RSS before", "VM peak RSS", "peak over before"],
      Enum.map(rows, fn r ->
        [
          r.name,
          r.outcome,
          Helper.mib(r.before),
          Helper.mib(r.peak),
          Helper.mib(r.peak - r.before)
        ]
      end)
    )

    Helper.write_results("bounds", %{listings: rows})
  end
end

Bench.Bounds.run()
