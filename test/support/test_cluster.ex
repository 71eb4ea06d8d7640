defmodule LibclusterDroplet.TestCluster do
  @moduledoc """
  Real BEAM nodes standing in for droplets, for tests, `make demo` and benchmarks.

  Each node is an OS process started with `:peer`, controlled over its
  standard I/O (so this VM need not be distributed and is never part of the
  cluster under test). An IPv4 node gets an address of its own in
  127.0.0.0/8 and listens for distribution on that address only, on a port
  shared by all nodes, without epmd (`-start_epmd false -erl_epmd_port`):
  exactly like droplets, two nodes may then share a basename
  (`app@127.1.0.2`, `app@127.1.0.3`). IPv6 nodes live on `::1` with
  `-proto_dist inet6_tcp` and so need epmd and distinct names.

  Nodes run with OTP's defaults, as droplets do: `connect_all` and
  `global`'s `prevent_overlapping_partitions` stay on.
  """

  @cookie "libcluster_droplet_test"

  defstruct [:pid, :node, :name, :address, :ipv6]

  @type t :: %__MODULE__{
          pid: pid(),
          node: node(),
          name: String.t(),
          address: String.t(),
          ipv6: boolean()
        }

  @doc "The distribution port every IPv4 node listens on (env `DROPLET_TEST_DIST_PORT`)."
  @spec dist_port() :: pos_integer()
  def dist_port do
    String.to_integer(System.get_env("DROPLET_TEST_DIST_PORT", "47370"))
  end

  @doc """
  `n` loopback addresses never handed out before in this VM, so concurrent
  tests never collide.
  """
  @spec allocate_addresses(pos_integer()) :: [String.t()]
  def allocate_addresses(n) do
    counter = :persistent_term.get({__MODULE__, :counter}, nil) || create_counter()

    last = :atomics.add_get(counter, 1, n)

    for k <- (last - n)..(last - 1) do
      "127.1.#{div(k, 250)}.#{rem(k, 250) + 2}"
    end
  end

  # Tests start nodes concurrently: the counter must be created exactly once,
  # or two tests would hand out the same addresses.
  defp create_counter do
    :global.trans({{__MODULE__, :counter}, self()}, fn ->
      case :persistent_term.get({__MODULE__, :counter}, nil) do
        nil ->
          counter = :atomics.new(1, [])
          :persistent_term.put({__MODULE__, :counter}, counter)
          counter

        counter ->
          counter
      end
    end)
  end

  @doc """
  Starts a node named `name@address`.

  Options: `:ipv6` (address must then be `"::1"`), `:log_level` for the
  node's Logger (default `:error`; `:info` shows libcluster's connect lines),
  `:args` extra `erl` arguments (e.g. `["-kernel", "net_setuptime", "60"]`),
  `:cookie` (default the one all test nodes share), `:env` (`[{"VAR",
  "value"}]` for the node's OS process, e.g. `ERL_EPMD_PORT`), and `:epmd`
  (`true`: the node registers with the epmd at `ERL_EPMD_PORT`, see
  `start_epmd/1`, on a port of its own, instead of the shared port).
  """
  @spec start_node(String.t(), String.t(), keyword()) :: t()
  def start_node(name, address, opts \\ []) do
    ipv6 = Keyword.get(opts, :ipv6, false)

    dist_args =
      cond do
        ipv6 -> [~c"-proto_dist", ~c"inet6_tcp"]
        Keyword.get(opts, :epmd, false) -> epmd_dist_args(address)
        true -> ipv4_dist_args(address)
      end

    env =
      for {var, value} <- Keyword.get(opts, :env, []),
          do: {String.to_charlist(var), String.to_charlist(value)}

    code_paths = Enum.flat_map(:code.get_path(), &[~c"-pa", &1])

    {:ok, pid, node} =
      :peer.start(%{
        name: String.to_atom(name),
        host: String.to_charlist(address),
        longnames: true,
        connection: :standard_io,
        wait_boot: 30_000,
        env: env,
        args:
          [~c"-setcookie", String.to_charlist(Keyword.get(opts, :cookie, @cookie))] ++
            dist_args ++
            Enum.map(Keyword.get(opts, :args, []), &String.to_charlist/1) ++ code_paths
      })

    level = Keyword.get(opts, :log_level, :error)
    {:ok, _} = call(%__MODULE__{pid: pid}, Application, :ensure_all_started, [:logger])
    :ok = call(%__MODULE__{pid: pid}, Logger, :configure, [[level: level]])
    # libcluster and telemetry, this project's optional dependencies, are on
    # the code path, so the strategy uses them: telemetry runs, as it does
    # in an application with libcluster.
    {:ok, _} = call(%__MODULE__{pid: pid}, Application, :ensure_all_started, [:telemetry])
    # Started, as in a release: its Store outlives a strategy that crashes.
    {:ok, _} =
      call(%__MODULE__{pid: pid}, Application, :ensure_all_started, [:libcluster_droplet])

    %__MODULE__{pid: pid, node: node, name: name, address: address, ipv6: ipv6}
  end

  @doc """
  Makes `address:port` a black hole: a listener whose accept queue is full,
  so the kernel drops every further SYN and a connect there hangs until
  its caller gives up, as with a droplet behind a firewall that drops
  packets. The sockets belong to the calling process; closing them (or its
  exit) ends the black hole.
  """
  @spec black_hole(String.t(), 1..65_535) :: [port()]
  def black_hole(address, port) do
    {:ok, ip} = :inet.parse_address(String.to_charlist(address))
    {:ok, listener} = :gen_tcp.listen(port, ip: ip, backlog: 0, reuseaddr: true, active: false)
    # Linux queues backlog + 1 connections: this one fills the queue.
    {:ok, filler} = :gen_tcp.connect(ip, port, [active: false], 1_000)
    [listener, filler]
  end

  @doc """
  The `erl` arguments of an IPv4 node at `address`: distribution on that
  address only, on `dist_port/0`, without epmd.
  """
  @spec ipv4_dist_args(String.t()) :: [charlist()]
  def ipv4_dist_args(address) do
    {:ok, ip} = :inet.parse_address(String.to_charlist(address))

    [
      ~c"-start_epmd",
      ~c"false",
      ~c"-erl_epmd_port",
      ~c"#{dist_port()}",
      ~c"-kernel",
      ~c"inet_dist_use_interface",
      String.to_charlist(inspect(ip)),
      # Addresses restart at 127.1.0.2 in every run: without SO_REUSEADDR
      # the last run's connections in TIME_WAIT make the bind fail.
      ~c"-kernel",
      ~c"inet_dist_listen_options",
      ~c"[{reuseaddr,true}]"
    ]
  end

  # Distribution on `address` only, on a port of the kernel's choosing,
  # registered with the (test's) epmd at ERL_EPMD_PORT; never one it starts.
  defp epmd_dist_args(address) do
    {:ok, ip} = :inet.parse_address(String.to_charlist(address))

    [
      ~c"-start_epmd",
      ~c"false",
      ~c"-kernel",
      ~c"inet_dist_use_interface",
      String.to_charlist(inspect(ip)),
      ~c"-kernel",
      ~c"inet_dist_listen_options",
      ~c"[{reuseaddr,true}]"
    ]
  end

  @doc """
  Starts an epmd of the test's own, on a free port, listening only on
  `addresses` (and 127.0.0.1, which epmd always adds), so that nodes
  started with `ERL_EPMD_PORT` set to that port register there and never
  with the machine's epmd (`port`: a port chosen beforehand, so that nodes
  booted before it are not registered with it). Returns the port;
  `stop_epmd/1` kills it.
  """
  @spec start_epmd([String.t()], :inet.port_number()) :: :inet.port_number()
  def start_epmd(addresses, port \\ free_port()) do
    epmd = System.find_executable("epmd") || raise "epmd is not on the PATH"

    {_, 0} =
      System.cmd(epmd, [
        "-daemon",
        "-relaxed_command_check",
        "-port",
        "#{port}",
        "-address",
        Enum.join(["127.0.0.1" | addresses], ",")
      ])

    await(fn ->
      case :gen_tcp.connect({127, 0, 0, 1}, port, [], 1_000) do
        {:ok, socket} ->
          :gen_tcp.close(socket)
          true

        {:error, _} ->
          false
      end
    end)

    port
  end

  @doc "Kills the epmd `start_epmd/1` started on `port` (and only that one)."
  @spec stop_epmd(:inet.port_number()) :: :ok
  def stop_epmd(port) do
    System.cmd(System.find_executable("epmd"), ["-port", "#{port}", "-kill"],
      stderr_to_stdout: true
    )

    :ok
  end

  @doc """
  Opens `address:port` as a service would: a listener that accepts every
  connection and closes it, so that health probes keep passing however
  many arrive. It ends with the calling process, or when the returned
  listener is closed.
  """
  @spec open_port(String.t(), :inet.port_number()) :: port()
  def open_port(address, port) do
    {:ok, ip} = :inet.parse_address(String.to_charlist(address))

    {:ok, listener} = :gen_tcp.listen(port, ip: ip, reuseaddr: true, active: false, backlog: 128)

    acceptor =
      spawn_link(fn ->
        Stream.repeatedly(fn -> :gen_tcp.accept(listener) end)
        |> Enum.each(fn
          {:ok, socket} -> :gen_tcp.close(socket)
          {:error, _} -> exit(:normal)
        end)
      end)

    :ok = :gen_tcp.controlling_process(listener, acceptor)
    listener
  end

  @doc "A TCP port free on loopback right now."
  @spec free_port() :: :inet.port_number()
  def free_port do
    {:ok, l} = :gen_tcp.listen(0, ip: {127, 0, 0, 1})
    {:ok, port} = :inet.port(l)
    :gen_tcp.close(l)
    port
  end

  @doc "Calls `m.f(a...)` on the node."
  @spec call(t(), module(), atom(), list(), timeout()) :: term()
  def call(%__MODULE__{pid: pid}, m, f, a, timeout \\ 15_000),
    do: :peer.call(pid, m, f, a, timeout)

  @doc """
  Starts `Cluster.Strategy.Droplet` on the node, supervised there as
  libcluster's `Cluster.Supervisor` would: a one_for_one supervisor whose
  child is `%{id: topology, start: {Cluster.Strategy.Droplet, :start_link, [[state]]}}`.
  `config` is the topology's `config:` list. Returns the supervisor's pid.
  """
  @spec start_strategy(t(), atom(), keyword(), keyword()) :: pid()
  def start_strategy(node, topology, config, opts \\ []) do
    {:ok, sup} =
      call(node, LibclusterDroplet.TestCluster.Remote, :start_strategy, [topology, config, opts])

    sup
  end

  @doc "The nodes this node is connected to, sorted."
  @spec connected(t()) :: [node()]
  def connected(node), do: node |> call(:erlang, :nodes, [:connected]) |> Enum.sort()

  @doc "Stops the node (its droplet disappears from the network)."
  @spec stop(t()) :: :ok
  def stop(%__MODULE__{pid: pid}) do
    :peer.stop(pid)
  catch
    :exit, _ -> :ok
  end

  @doc """
  Like `await/3`, but returns `{:ok, ms}` or `{:timeout, ms}` instead of
  failing: the caller says what a timeout means.
  """
  def await_result(fun, timeout, interval \\ 25) do
    started = System.monotonic_time(:millisecond)

    try do
      await(fun, timeout, interval)
      {:ok, System.monotonic_time(:millisecond) - started}
    rescue
      ExUnit.AssertionError -> {:timeout, System.monotonic_time(:millisecond) - started}
    end
  end

  @doc """
  Runs `check` (returning a list of problems) every `interval` ms until
  `done` holds or `timeout` ms pass (the caller checks which); returns the
  problems found, after `acc`.
  """
  def sample_until(done, check, timeout, interval \\ 25, acc \\ []) do
    do_sample(done, check, System.monotonic_time(:millisecond) + timeout, interval, acc)
  end

  defp do_sample(done, check, deadline, interval, acc) do
    acc = acc ++ check.()

    cond do
      done.() -> acc
      System.monotonic_time(:millisecond) > deadline -> acc
      true -> Process.sleep(interval) && do_sample(done, check, deadline, interval, acc)
    end
  end

  @doc """
  Waits until `fun` returns a truthy value, checking every `interval` ms, at
  most `timeout` ms. Returns the value, or raises with `fun`'s last answer.
  """
  @spec await((() -> term()), pos_integer(), pos_integer()) :: term()
  def await(fun, timeout \\ 10_000, interval \\ 25) do
    deadline = System.monotonic_time(:millisecond) + timeout
    do_await(fun, deadline, interval)
  end

  defp do_await(fun, deadline, interval) do
    case fun.() do
      result when result not in [nil, false] ->
        result

      result ->
        if System.monotonic_time(:millisecond) > deadline do
          raise ExUnit.AssertionError,
            message: "condition not met in time; last value: #{inspect(result)}"
        end

        Process.sleep(interval)
        do_await(fun, deadline, interval)
    end
  end

  @doc "Whether `nodes` form a full mesh: each is connected to all the others."
  @spec full_mesh?([t()]) :: boolean()
  def full_mesh?(nodes) do
    names = Enum.map(nodes, & &1.node)

    Enum.all?(nodes, fn n ->
      connected = connected(n)
      Enum.all?(names -- [n.node], &(&1 in connected))
    end)
  end
end

defmodule LibclusterDroplet.TestCluster.Remote do
  @moduledoc false
  # Runs inside test nodes.

  def start_strategy(topology, config, opts) do
    state =
      struct(Cluster.Strategy.State,
        topology: topology,
        config: config,
        connect: Keyword.get(opts, :connect, {:net_kernel, :connect_node, []}),
        disconnect: Keyword.get(opts, :disconnect, {:erlang, :disconnect_node, []}),
        list_nodes: Keyword.get(opts, :list_nodes, {:erlang, :nodes, [:connected]})
      )

    child = %{id: topology, start: {Cluster.Strategy.Droplet, :start_link, [[state]]}}

    with {:ok, sup} <- Supervisor.start_link([child], strategy: :one_for_one, max_restarts: 100) do
      # The caller is a short-lived RPC process; the supervisor must outlive it.
      Process.unlink(sup)
      {:ok, sup}
    end
  end

  @doc false
  # libcluster's own Cluster.Supervisor with these topologies, as an
  # application's supervision tree starts it.
  def start_cluster_supervisor(topologies) do
    with {:ok, sup} <-
           Cluster.Supervisor.start_link([topologies, [name: Cluster.Supervisor.Test]]) do
      Process.unlink(sup)
      {:ok, sup}
    end
  end

  @doc false
  # The way a user without libcluster starts it: the keyword child spec,
  # libcluster's default MFAs.
  def start_keyword_strategy(topology, config) do
    with {:ok, sup} <-
           Supervisor.start_link([{Cluster.Strategy.Droplet, topology: topology, config: config}],
             strategy: :one_for_one
           ) do
      Process.unlink(sup)
      {:ok, sup}
    end
  end

  @doc false
  # Records every nodedown this node sees, from now on.
  def start_nodedown_recorder do
    parent = self()

    pid =
      spawn(fn ->
        :ok = :net_kernel.monitor_nodes(true)
        send(parent, :recording)
        record_nodedowns([])
      end)

    Process.register(pid, __MODULE__.Nodedowns)

    receive do
      :recording -> :ok
    end
  end

  @doc false
  # Records every line at `level` or worse this node logs from now on (the
  # node's own level must let them through).
  def capture_warnings(level \\ :warning) do
    {:ok, _} = Agent.start(fn -> [] end, name: __MODULE__.Warnings)
    :ok = :logger.add_handler(:droplet_test_warnings, __MODULE__, %{level: level})
    # Recorded, not printed: the test output stays the test runner's.
    _ = :logger.remove_handler(:default)
    _ = Logger.remove_backend(:console)
    :ok
  end

  @doc false
  def warnings, do: Agent.get(__MODULE__.Warnings, &Enum.reverse/1)

  @doc false
  # The :logger handler of capture_warnings/0.
  def log(%{msg: msg}, _config) do
    text =
      case msg do
        {:string, chardata} -> IO.chardata_to_string(chardata)
        {:report, report} -> inspect(report)
        {format, args} -> format |> :io_lib.format(args) |> IO.chardata_to_string()
      end

    Agent.update(__MODULE__.Warnings, &[text | &1])
  end

  @doc false
  # Traces `pid`'s sends, its health-check probes and its connect tasks into
  # an Agent, in the order they happen.
  def trace_strategy(pid) do
    {:ok, agent} = Agent.start(fn -> [] end, name: __MODULE__.Trace)

    tracer =
      spawn(fn ->
        Stream.repeatedly(fn -> receive do: (event -> event) end)
        |> Enum.each(fn event -> Agent.update(agent, &[event | &1]) end)
      end)

    :erlang.trace_pattern({LibclusterDroplet, :start_check, 3}, true, [:local])
    :erlang.trace_pattern({Task.Supervisor, :async_nolink, 4}, true, [:local])
    :erlang.trace(pid, true, [:send, :call, {:tracer, tracer}])
    :ok
  end

  @doc false
  # [{:share | :probe | :connect, about?}], oldest first: about? tells
  # whether the share, the probe's targets or the connected node name
  # `about` (an address).
  def traced(about) do
    __MODULE__.Trace
    |> Agent.get(&Enum.reverse/1)
    |> Enum.flat_map(fn
      {:trace, _, :send, message, _to} when elem(message, 0) == :libcluster_droplet_share ->
        [{:share, inspect(message, limit: :infinity) =~ about}]

      {:trace, _, :call, {LibclusterDroplet, :start_check, args}} ->
        [{:probe, inspect(args, limit: :infinity) =~ about}]

      {:trace, _, :call, {Task.Supervisor, :async_nolink, args}} ->
        [{:connect, inspect(args, limit: :infinity) =~ about}]

      _ ->
        []
    end)
  end

  @doc false
  # Makes the strategy lose the answer of its share check in flight: the
  # NIF's reply will carry a ref it no longer waits for.
  def lose_check_reply(pid), do: :sys.replace_state(pid, &put_in(&1.phase.call.ref, make_ref()))

  @doc false
  # Takes every helper permit of this node's NIF thread budget (a call
  # starts with an eighth at most: eight admissions), held by a process of
  # its own until `release_helpers/1`: calls then run one item at a time.
  def hold_helpers do
    test = self()

    holder =
      spawn(fn ->
        admitted = for _ <- 1..8, do: LibclusterDroplet.Native.debug_admit(1_024)
        send(test, {:granted, Enum.sum(for {:ok, _held, granted} <- admitted, do: granted)})

        receive do
          :release ->
            for {:ok, held, _} <- admitted, do: LibclusterDroplet.Native.debug_release(held)
        end
      end)

    receive do
      {:granted, granted} -> {holder, granted}
    end
  end

  @doc false
  def release_helpers(holder), do: send(holder, :release)

  @doc false
  # A process holding the NIF call in flight of strategy `pid`'s check
  # until told to stop: while it does, garbage collection cannot cancel the
  # call, only the strategy's own cancel can.
  def hold_check_call(pid) do
    %{phase: %{call: %LibclusterDroplet.Call{} = call}} = :sys.get_state(pid)

    spawn(fn ->
      receive do
        :release -> LibclusterDroplet.cancel(call)
      end
    end)
  end

  @doc false
  # This VM's live threads named by the NIF (droplet_list, droplet_page,
  # droplet_probe), as the kernel lists them.
  def nif_threads do
    "/proc/self/task/*/comm"
    |> Path.wildcard()
    |> Enum.count(&match?({:ok, "droplet_" <> _}, File.read(&1)))
  end

  @doc false
  def nodedowns do
    send(__MODULE__.Nodedowns, {:get, self()})

    receive do
      {:nodedowns, downs} -> downs
    end
  end

  defp record_nodedowns(downs) do
    receive do
      {:nodedown, node} -> record_nodedowns([node | downs])
      {:nodeup, _} -> record_nodedowns(downs)
      {:get, from} -> send(from, {:nodedowns, Enum.reverse(downs)}) && record_nodedowns(downs)
    end
  end

  @doc false
  def strategy_pid(sup) do
    case Supervisor.which_children(sup) do
      [{_, pid, _, _}] when is_pid(pid) -> pid
      _ -> nil
    end
  end

  @doc false
  # Loads every module of the applications a strategy runs on, so that code
  # loaded on first use (and the atoms it brings) is not mistaken for growth.
  def preload_code do
    for app <- [:kernel, :stdlib, :elixir, :logger, :libcluster_droplet],
        {:ok, modules} = :application.get_key(app, :modules),
        do: :code.ensure_modules_loaded(modules)

    :ok
  end

  @doc false
  def vm_stats do
    %{
      processes: :erlang.system_info(:process_count),
      atoms: :erlang.system_info(:atom_count),
      memory: :erlang.memory(:total)
    }
  end
end

defmodule LibclusterDroplet.TestCluster.RemoteProbe do
  @moduledoc false
  # Runs inside test nodes (or this VM): edits a strategy's state, traces
  # its listings and shares, records every telemetry event and every log
  # event in full (SASL reports included), and stands in for the node's
  # rex server.

  @doc false
  # Sets the field at the path `keys` (struct or map keys) of a strategy's state.
  def put_state(pid, keys, value),
    do: :sys.replace_state(pid, &put_in(&1, Enum.map(keys, fn k -> Access.key!(k) end), value))

  @doc false
  # Records, in order, each listing `pid` starts (`:list`) and each share it
  # sends (`:share`); listings_and_shares/1 reads them.
  def trace_listings_and_shares(pid) do
    tracer = spawn(fn -> trace_events([]) end)
    Process.register(tracer, __MODULE__.Tracer)
    :erlang.trace_pattern({LibclusterDroplet, :start_list_droplets, 1}, true, [:local])
    1 = :erlang.trace(pid, true, [:send, :call, {:tracer, tracer}])
    :ok
  end

  @doc false
  # Every event `pid` caused so far, once all its trace messages have
  # reached the tracer.
  def listings_and_shares(pid) do
    ref = :erlang.trace_delivered(pid)

    receive do
      {:trace_delivered, ^pid, ^ref} -> :ok
    end

    send(__MODULE__.Tracer, {:events, self()})

    receive do
      {:traced, events} -> events
    end
  end

  defp trace_events(events) do
    receive do
      {:trace, _, :call, {LibclusterDroplet, :start_list_droplets, _}} ->
        trace_events([:list | events])

      {:trace, _, :send, message, _to} when elem(message, 0) == :libcluster_droplet_share ->
        trace_events([:share | events])

      {:events, from} ->
        send(from, {:traced, Enum.reverse(events)})
        trace_events(events)

      _other ->
        trace_events(events)
    end
  end

  @doc false
  # Records every telemetry event of `events` from now on.
  def record_telemetry(events) do
    {:ok, _} = Agent.start(fn -> [] end, name: __MODULE__.Telemetry)
    :ok = :telemetry.attach_many("droplet-probe", events, &__MODULE__.telemetry_event/4, nil)
  end

  @doc false
  def telemetry_event(event, measurements, metadata, _config),
    do: Agent.update(__MODULE__.Telemetry, &[{event, measurements, metadata} | &1])

  @doc false
  def telemetry, do: Agent.get(__MODULE__.Telemetry, &Enum.reverse/1)

  @doc false
  # Records every log event from now on, at every level and of every domain
  # (SASL's supervisor, progress and crash reports too): formatted by OTP,
  # and the raw event inspected in full.
  def capture_all_logs do
    {:ok, _} = Agent.start(fn -> [] end, name: __MODULE__.Log)
    :ok = :logger.add_handler(:droplet_probe_log, __MODULE__, %{level: :all})
    # Recorded, not printed: the test output stays the test runner's.
    _ = :logger.remove_handler(:default)
    _ = Logger.remove_backend(:console)
    :ok
  end

  @doc false
  def logged, do: Agent.get(__MODULE__.Log, &Enum.reverse/1)

  @doc false
  # The :logger handler of capture_all_logs/0.
  def log(event, _config) do
    limits = %{single_line: false, chars_limit: :unlimited, max_size: :unlimited}
    formatted = :logger_formatter.format(event, Map.merge(limits, %{depth: :unlimited}))
    raw = inspect(event, limit: :infinity, printable_limit: :infinity)
    Agent.update(__MODULE__.Log, &[IO.chardata_to_string(formatted) <> "\n" <> raw | &1])
  end

  @doc false
  # Replaces this node's rex (the RPC server other nodes' requests to leave
  # are cast to) by a process that counts them and carries none out until
  # obey_rex/0.
  def stub_rex do
    Process.unregister(:rex)
    Process.register(spawn(fn -> rex(0, false) end), :rex)
    :ok
  end

  @doc false
  def obey_rex, do: send(:rex, :obey)

  @doc false
  def rex_requests do
    send(:rex, {:count, self()})

    receive do
      {:rex_count, count} -> count
    end
  end

  defp rex(count, obey?) do
    receive do
      {:count, from} ->
        send(from, {:rex_count, count})
        rex(count, obey?)

      :obey ->
        rex(count, true)

      {:"$gen_cast", {:cast, m, f, a, _group_leader}} ->
        if obey?, do: spawn(m, f, a)
        rex(count + 1, obey?)

      _other ->
        rex(count, obey?)
    end
  end
end
