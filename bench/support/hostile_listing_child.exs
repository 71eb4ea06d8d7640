# Run by Bench.HostileListing.cold_run/1 in a fresh VM: one listing, its
# memory figures printed as one line.
Code.require_file("bench_helper.exs", __DIR__)
Code.require_file("fake_droplets.exs", __DIR__)
Code.require_file("hostile_listing.exs", __DIR__)

[index] = System.argv()
Bench.HostileListing.child(String.to_integer(index))
