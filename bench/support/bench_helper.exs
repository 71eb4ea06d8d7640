defmodule Bench.Helper do
  @moduledoc false
  # Shared by every bench/*_bench.exs: the machine description, warm-up and
  # medians, CPU and memory accounting read from /proc, tables, and the
  # machine-readable results under bench/results/.

  @results_dir Path.expand("../results", __DIR__)

  # ------------------------------------------------------------------ machine

  @doc "What the figures were measured on."
  def machine do
    %{
      nproc: nproc(),
      cpu_model: cpu_model(),
      otp: System.otp_release(),
      erts: to_string(:erlang.system_info(:version)),
      elixir: System.version(),
      schedulers: :erlang.system_info(:schedulers_online),
      open_files: open_files_limit()
    }
  end

  defp nproc do
    case System.cmd("nproc", []) do
      {out, 0} -> String.to_integer(String.trim(out))
      _ -> :erlang.system_info(:logical_processors_available)
    end
  rescue
    # nproc missing from the PATH.
    ErlangError -> :erlang.system_info(:logical_processors_available)
  end

  defp cpu_model do
    with {:ok, info} <- File.read("/proc/cpuinfo"),
         [_, model] <- Regex.run(~r/^model name\s*:\s*(.+)$/m, info) do
      String.trim(model)
    else
      _ -> "unknown"
    end
  end

  @doc "The open-files limit of this OS process, `%{soft: n, hard: n}` (`:unlimited` possible)."
  def open_files_limit do
    with {:ok, limits} <- File.read("/proc/self/limits"),
         [_, soft, hard] <- Regex.run(~r/^Max open files\s+(\S+)\s+(\S+)/m, limits) do
      %{soft: limit_value(soft), hard: limit_value(hard)}
    else
      _ -> %{soft: :unknown, hard: :unknown}
    end
  end

  defp limit_value("unlimited"), do: :unlimited
  defp limit_value(n), do: String.to_integer(n)

  @doc "Prints a benchmark's title, the machine and its parameters."
  def header(title, params) do
    m = machine()

    IO.puts("""

    #{String.duplicate("=", 78)}
    #{title}
    #{String.duplicate("=", 78)}
    machine: nproc #{m.nproc} | CPU #{m.cpu_model} | OTP #{m.otp} (erts #{m.erts}) | \
    Elixir #{m.elixir} | #{m.schedulers} schedulers | open files #{m.open_files.soft} \
    (hard #{m.open_files.hard})
    parameters:\
    """)

    for {key, value} <- params, do: IO.puts("  #{key}: #{value}")
    m
  end

  @doc "Prints a section title."
  def section(title), do: IO.puts("\n-- #{title}")

  # -------------------------------------------------------------------- stats

  @doc "The median of a non-empty list of numbers."
  def median(values) do
    sorted = Enum.sort(values)
    n = length(sorted)
    mid = div(n, 2)

    if rem(n, 2) == 1,
      do: Enum.at(sorted, mid),
      else: (Enum.at(sorted, mid - 1) + Enum.at(sorted, mid)) / 2
  end

  @doc """
  Calls `fun` once to warm up (connections, agents, caches, code loading)
  and discards the result, then `runs` more times; returns those results.
  """
  def warm_runs(runs, fun) do
    _ = fun.()
    for _ <- 1..runs, do: fun.()
  end

  @doc "`{microseconds, result}` of `fun.()`, on the monotonic clock."
  def time_us(fun) do
    started = System.monotonic_time(:microsecond)
    result = fun.()
    {System.monotonic_time(:microsecond) - started, result}
  end

  # ---------------------------------------------------------------------- cpu
  #
  # /proc/self/stat counts the CPU time of the whole OS process, the NIF's
  # threads included; /proc/self/task/*/stat counts it per thread. The NIF
  # starts new threads for every call and they are gone (or about to be)
  # when the call answers, while the VM's own threads (schedulers, dirty
  # schedulers, poller, aux) live for the whole run. So the CPU of the
  # threads alive at both snapshots is the VM's (here: the fake API server,
  # the Elixir side and idle schedulers spinning), and the rest of the
  # process's CPU is the NIF's threads'.
  #
  # Linux reports these in clock ticks (usually 10 ms): measure batches long
  # enough that a tick is small next to them.
  #
  # :erlang.statistics(:runtime) is the user time of the whole process on
  # Linux (times(2)), NIF threads included but system time left out; it is
  # reported alongside for comparison.

  @doc "A CPU-time snapshot; compare two with `cpu_delta/2`."
  def cpu_snapshot do
    %{
      process: stat_ticks(File.read!("/proc/self/stat")),
      threads: thread_ticks(),
      runtime_ms: elem(:erlang.statistics(:runtime), 0)
    }
  end

  @doc """
  CPU milliseconds between two snapshots: `total` (user + system, whole
  process), `user`, `sys`, `vm` (threads alive at both snapshots), `nif`
  (every other thread, i.e. the NIF's) and `runtime` (`:erlang.statistics(:runtime)`).
  """
  def cpu_delta(before, later) do
    {u0, s0} = before.process
    {u1, s1} = later.process
    total = u1 - u0 + s1 - s0

    vm =
      for {tid, {name, ticks}} <- later.threads,
          {^name, earlier} <- [Map.get(before.threads, tid)],
          reduce: 0,
          do: (acc -> acc + ticks - earlier)

    %{
      total: ticks_ms(total),
      user: ticks_ms(u1 - u0),
      sys: ticks_ms(s1 - s0),
      vm: ticks_ms(vm),
      nif: ticks_ms(total - vm),
      runtime: later.runtime_ms - before.runtime_ms
    }
  end

  # utime and stime, fields 14 and 15 of stat(5), after the command name in
  # parentheses (which may itself contain spaces and parentheses).
  defp stat_ticks(stat) do
    {name_end, _} = stat |> :binary.matches(") ") |> List.last()
    fields = stat |> binary_part(name_end + 2, byte_size(stat) - name_end - 2) |> String.split()
    {String.to_integer(Enum.at(fields, 11)), String.to_integer(Enum.at(fields, 12))}
  end

  defp thread_ticks do
    for tid <- File.ls!("/proc/self/task"),
        {:ok, stat} <- [File.read("/proc/self/task/#{tid}/stat")],
        into: %{} do
      {user, sys} = stat_ticks(stat)
      {tid, {thread_name(stat), user + sys}}
    end
  end

  defp thread_name(stat) do
    {name_end, _} = stat |> :binary.matches(") ") |> List.last()
    {name_start, _} = :binary.match(stat, "(")
    binary_part(stat, name_start + 1, name_end - name_start - 1)
  end

  defp ticks_ms(ticks), do: ticks * 1000 / clock_ticks_per_second()

  defp clock_ticks_per_second do
    case :persistent_term.get({__MODULE__, :clk_tck}, nil) do
      nil ->
        hz =
          case System.cmd("getconf", ["CLK_TCK"]) do
            {out, 0} -> String.to_integer(String.trim(out))
            _ -> 100
          end

        :persistent_term.put({__MODULE__, :clk_tck}, hz)
        hz

      hz ->
        hz
    end
  end

  # ------------------------------------------------------------------- memory

  @doc """
  Starts a process sampling `:erlang.memory(:total)` every `interval_ms`
  until `stop_memory_sampler/1`. It runs at high priority so the fake
  server's processes do not delay its samples.
  """
  def start_memory_sampler(interval_ms \\ 1) do
    spawn_link(fn ->
      Process.flag(:priority, :high)
      sample_memory(interval_ms, :erlang.memory(:total), 1)
    end)
  end

  @doc "Stops a sampler: `%{peak: bytes, samples: n}`."
  def stop_memory_sampler(sampler) do
    ref = make_ref()
    send(sampler, {:stop, self(), ref})

    receive do
      {^ref, result} -> result
    end
  end

  defp sample_memory(interval_ms, peak, samples) do
    receive do
      {:stop, from, ref} ->
        send(from, {ref, %{peak: max(peak, :erlang.memory(:total)), samples: samples + 1}})
    after
      interval_ms -> sample_memory(interval_ms, max(peak, :erlang.memory(:total)), samples + 1)
    end
  end

  @doc "Fields of /proc/self/status in bytes, e.g. `proc_status([\"VmRSS\", \"VmHWM\"])`."
  def proc_status(keys) do
    status = File.read!("/proc/self/status")

    Map.new(keys, fn key ->
      [_, kb] = Regex.run(~r/^#{key}:\s+(\d+) kB/m, status)
      {key, String.to_integer(kb) * 1024}
    end)
  end

  @doc """
  Resets VmHWM (the peak resident set) to the current VmRSS, so the next
  reading is the peak since now (Linux ≥ 4.0). `:ok` or `{:error, reason}`.
  """
  def reset_peak_rss, do: File.write("/proc/self/clear_refs", "5")

  # ------------------------------------------------------------------- output

  @doc "Prints a table: the first column left-aligned, the others right-aligned."
  def table(headers, rows) do
    cells = Enum.map([headers | rows], fn row -> Enum.map(row, &cell/1) end)

    widths =
      cells
      |> Enum.zip_with(& &1)
      |> Enum.map(fn column -> column |> Enum.map(&String.length/1) |> Enum.max() end)

    [head | body] = Enum.map(cells, &format_row(&1, widths))
    rule = Enum.map_join(widths, "-+-", &String.duplicate("-", &1))
    IO.puts(Enum.join([head, rule | body], "\n"))
  end

  defp format_row([first | rest], [w | ws]) do
    Enum.join(
      [String.pad_trailing(first, w) | Enum.zip_with(rest, ws, &String.pad_leading/2)],
      " | "
    )
  end

  defp cell(value) when is_binary(value), do: value
  defp cell(value) when is_integer(value), do: int(value)
  defp cell(value) when is_float(value), do: num(value, 1)
  defp cell(nil), do: "-"
  defp cell(value), do: to_string(value)

  @doc "An integer with thousands separators: `10,000`."
  def int(n) when is_integer(n) do
    sign = if n < 0, do: "-", else: ""

    digits =
      n
      |> abs()
      |> Integer.to_string()
      |> String.reverse()
      |> String.graphemes()
      |> Enum.chunk_every(3)
      |> Enum.map_join(",", &Enum.join/1)
      |> String.reverse()

    sign <> digits
  end

  @doc "A number with `decimals` decimals."
  def num(x, decimals), do: :erlang.float_to_binary(x * 1.0, decimals: decimals)

  @doc "Microseconds as milliseconds with 2 decimals."
  def ms(us), do: num(us / 1000, 2)

  @doc "Bytes as MiB with 1 decimal."
  def mib(bytes), do: num(bytes / 1_048_576, 1) <> " MiB"

  @doc "Whether a target is met, as printed."
  def verdict(true), do: "MET"
  def verdict(false), do: "MISSED"

  @doc """
  Appends one JSON line (`data` plus the machine, the time and the commit)
  to bench/results/<name>.jsonl and returns the path.
  """
  def write_results(name, data) do
    File.mkdir_p!(@results_dir)
    path = Path.join(@results_dir, "#{name}.jsonl")

    line =
      Map.merge(
        %{
          benchmark: name,
          at: DateTime.utc_now() |> DateTime.truncate(:second) |> DateTime.to_iso8601(),
          commit: git_commit(),
          machine: machine()
        },
        data
      )

    File.write!(path, [Jason.encode!(line), ?\n], [:append])
    IO.puts("\nresults appended to #{Path.relative_to_cwd(path)}")
    path
  end

  defp git_commit do
    case System.cmd("git", ["rev-parse", "--short", "HEAD"], stderr_to_stdout: true) do
      {out, 0} -> String.trim(out)
      _ -> nil
    end
  rescue
    ErlangError -> nil
  end
end
