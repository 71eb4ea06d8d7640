# Run by Bench.PollMemory.cold_run/1 in a fresh VM: the first poll of
# `size` droplets of this VM, its memory figures printed as one JSON line.
Code.require_file("bench_helper.exs", __DIR__)
Code.require_file("fake_droplets.exs", __DIR__)
Code.require_file("poll_memory.exs", __DIR__)

[size] = System.argv()
Bench.PollMemory.cold_child(String.to_integer(size))
