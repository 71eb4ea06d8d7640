defmodule LibclusterDroplet.ConsumerApp do
  @moduledoc """
  A throwaway Mix application that uses this project the way a real user's
  application does, for `test/consumer_app_test.exs`.

  `build!/1` writes it in a temporary directory beside a copy of exactly
  the package's files of this project (as `deps/` holds it for a user:
  Rustler and RustlerPrecompiled write the NIF into its `priv/native`)
  and a copy of the vendored Hex packages (`../shared/vendor`, see its
  README), all listed as path dependencies, as Hex would resolve them for
  a user, and compiles it with `mix compile` (`MIX_ENV=prod`, and
  `LIBCLUSTER_DROPLET_VENDOR` naming the same copy, so this project's
  dependencies are those folders too). Its application starts, as the
  README says,

      {Cluster.Supervisor, [Application.get_env(:libcluster, :topologies),
                            [name: ConsumerApp.ClusterSupervisor]]}

  and a tiny TCP listener on the node's own address (port 4000 unless
  configured), standing in for the Phoenix endpoint the README's
  `health_check: {:tcp, port: 4000, ...}` expects.

  Its `config/runtime.exs` is the README's `## Configuration` code block,
  extracted from README.md, followed by test-only keys that `Config`
  deep-merges on top (the fake API's URL, a short polling interval, a high
  request budget, a short backoff cap); see `runtime_exs/2`.

  `start_node/4` starts a node of it: its own OS process, started with
  `:peer` on its own loopback address exactly like
  `LibclusterDroplet.TestCluster.start_node/3` (no epmd, a shared
  distribution port, so nodes share the basename), but with the consumer's
  `_build/prod/lib/*/ebin` as code path and OTP's defaults for `connect_all`
  and `prevent_overlapping_partitions`. The node reads `config/runtime.exs`
  with `Config.Reader`, as a release would, and starts `:consumer_app`.
  """

  alias LibclusterDroplet.TestCluster

  @cookie "libcluster_droplet_consumer_app"
  # What Hex would fetch for an application listing libcluster and
  # libcluster_droplet; rustler and toml only for a build from source.
  @vendored ~w(libcluster jason telemetry rustler_precompiled castore nimble_options)
  @source_build_vendored ~w(rustler toml)
  @api_url_env "CONSUMER_APP_API_URL"
  @token_env "DIGITALOCEAN_TOKEN"

  @typedoc """
  A compiled consumer application: its directory (removed by `cleanup/1`),
  the code path of its nodes, its `config/runtime.exs`, and what the
  README's topology asks of droplets (`tag_name`, `node_basename`,
  `network`, the health-check port).
  """
  @type t :: %__MODULE__{
          tmp: Path.t(),
          dir: Path.t(),
          code_paths: [Path.t()],
          runtime_exs: Path.t(),
          readme_block: String.t(),
          topology: atom(),
          tag_name: String.t() | nil,
          node_basename: String.t() | nil,
          network: :private | :public,
          health_check_port: pos_integer() | nil,
          env: [{String.t(), String.t() | nil}],
          compile_output: String.t(),
          compile_ms: non_neg_integer()
        }

  defstruct [
    :tmp,
    :dir,
    :code_paths,
    :runtime_exs,
    :readme_block,
    :topology,
    :tag_name,
    :node_basename,
    :network,
    :health_check_port,
    :env,
    :compile_output,
    :compile_ms
  ]

  @doc """
  Where the vendored Hex packages live for the project at `root`: the
  folder `LIBCLUSTER_DROPLET_VENDOR` names (the Makefile's copy), else
  `../shared/vendor`.
  """
  @spec vendor_dir(Path.t()) :: Path.t()
  def vendor_dir(root) do
    case System.get_env("LIBCLUSTER_DROPLET_VENDOR") do
      dir when dir in [nil, ""] -> Path.expand("../shared/vendor", root)
      dir -> dir
    end
  end

  @doc "The environment variable the test-only keys read the fake API's URL from."
  @spec api_url_env() :: String.t()
  def api_url_env, do: @api_url_env

  @doc """
  The code of the README's `## Configuration` section: its first ```` ```elixir ````
  block. Raises if the section or the block is missing.
  """
  @spec readme_config_block!(Path.t()) :: String.t()
  def readme_config_block!(readme) do
    text = File.read!(readme)

    with [_, section] <- Regex.run(~r/^## Configuration\n(.*?)(?=^## )/ms, text),
         [_, code] <- Regex.run(~r/^```elixir\n(.*?)^```/ms, section) do
      code
    else
      _ -> raise "#{readme}: no ```elixir block under \"## Configuration\""
    end
  end

  @doc """
  Builds and compiles the consumer application. Options: `:root` (this
  project or a copy of its package, required), `:vendor` (default
  `vendor_dir(root)`), `:polling_interval` (default 300 ms), `:env` (the
  environment of `mix compile` and `mix release`, see `mix_env/1`; by
  default `LIBCLUSTER_DROPLET_BUILD=1`: the NIF is built from source, in
  `shared_target_dir(root)`), `:rustler` (list rustler and toml among the
  dependencies, as a source build needs; default: when
  `LIBCLUSTER_DROPLET_BUILD` is set). RustlerPrecompiled's cache is a
  directory of the consumer's own unless `:env` names one.
  """
  @spec build!(keyword()) :: t()
  def build!(opts) do
    root = Keyword.fetch!(opts, :root)
    vendor = Keyword.get(opts, :vendor, vendor_dir(root))
    interval = Keyword.get(opts, :polling_interval, 300)

    env =
      Keyword.get(opts, :env, [
        {"CARGO_TARGET_DIR", shared_target_dir(root)},
        {"LIBCLUSTER_DROPLET_BUILD", "1"}
      ])

    rustler? = Keyword.get(opts, :rustler, List.keymember?(env, "LIBCLUSTER_DROPLET_BUILD", 0))

    tmp =
      Path.join(
        System.tmp_dir!(),
        "libcluster_droplet_consumer_app_#{System.pid()}_#{System.unique_integer([:positive])}"
      )

    File.mkdir_p!(tmp)

    try do
      do_build!(tmp, root, vendor, interval, env, rustler?)
    rescue
      error ->
        File.rm_rf(tmp)
        reraise error, __STACKTRACE__
    end
  end

  defp do_build!(tmp, root, vendor, interval, env, rustler?) do
    # The vendor folder is read-only in CI, and Mix may write into path deps.
    vendored = @vendored ++ if(rustler?, do: @source_build_vendored, else: [])
    copy = Path.join(tmp, "vendor")
    File.mkdir_p!(copy)

    # Every package, so that this project's optional ones resolve too.
    for app <- File.ls!(vendor), File.dir?(Path.join(vendor, app)) do
      dest = Path.join(copy, app)
      File.cp_r!(Path.join(vendor, app), dest)
      make_writable!(dest)
    end

    env =
      [
        {"LIBCLUSTER_DROPLET_VENDOR", copy},
        {"RUSTLER_PRECOMPILED_GLOBAL_CACHE_PATH", Path.join(tmp, "rustler_precompiled_cache")}
      ]
      |> Enum.reject(fn {key, _} -> List.keymember?(env, key, 0) end)
      |> Kernel.++(env)

    package = Path.join(tmp, "libcluster_droplet")
    files = LibclusterDroplet.Package.files(root, LibclusterDroplet.MixProject.package_files())
    LibclusterDroplet.Package.copy!(root, files, package)
    dir = Path.join(tmp, "consumer_app")
    readme_block = readme_config_block!(Path.join(root, "README.md"))
    info = readme_topology!(readme_block)
    port = info.health_check_port || 4000

    files = %{
      "mix.exs" => mix_exs(copy, vendored, package),
      "lib/consumer_app/application.ex" => application_ex(),
      "lib/consumer_app/endpoint.ex" => endpoint_ex(),
      "config/runtime.exs" => runtime_exs(readme_block, info, interval, port)
    }

    for {path, contents} <- files do
      path = Path.join(dir, path)
      File.mkdir_p!(Path.dirname(path))
      File.write!(path, contents)
    end

    started = System.monotonic_time(:millisecond)
    {out, status} = mix(dir, ["compile"], env)

    if status != 0 do
      raise "compiling the consumer application in #{dir} failed (#{status}):\n#{out}"
    end

    build = Path.join(dir, "_build/prod")

    code_paths =
      Enum.filter([Path.join(build, "lib/consumer_app/consolidated")], &File.dir?/1) ++
        Path.wildcard(Path.join(build, "lib/*/ebin")) ++
        Enum.map([:elixir, :logger], &Path.join(:code.lib_dir(&1), "ebin"))

    struct!(
      __MODULE__,
      Map.merge(info, %{
        tmp: tmp,
        dir: dir,
        code_paths: code_paths,
        runtime_exs: Path.join(dir, "config/runtime.exs"),
        readme_block: readme_block,
        env: env,
        compile_output: out,
        compile_ms: System.monotonic_time(:millisecond) - started
      })
    )
  end

  @doc "Removes the temporary directory."
  @spec cleanup(t()) :: :ok
  def cleanup(%__MODULE__{tmp: tmp}) do
    File.rm_rf!(tmp)
    :ok
  end

  @doc """
  Where cargo builds the NIF for consumer projects that depend on the
  project at `root` itself (`CARGO_TARGET_DIR`): one directory for all of
  them, so only the first build of a `mix test` run compiles the crates.
  """
  @spec shared_target_dir(Path.t()) :: Path.t()
  def shared_target_dir(root), do: Path.join(root, "_build/test_consumers_native")

  @doc """
  The environment of a consumer's `mix` command: `MIX_ENV=prod`, nothing of
  the outer `mix test` (Mix's own variables, the NIF build's and
  RustlerPrecompiled's variables, proxies), `HTTPS_PROXY` at a closed
  loopback port (a build that fell back to the default GitHub release URL
  fails there instead of leaving the machine), then `extra`.
  """
  @spec mix_env([{String.t(), String.t() | nil}]) :: [{String.t(), String.t() | nil}]
  def mix_env(extra) do
    cleared = ~w(MIX_TARGET MIX_EXS MIX_BUILD_PATH MIX_BUILD_ROOT MIX_DEPS_PATH MIX_LOCKFILE
         CARGO_TARGET_DIR LIBCLUSTER_DROPLET_BUILD LIBCLUSTER_DROPLET_BASE_URL
         LIBCLUSTER_DROPLET_VENDOR RUSTLER_PRECOMPILED_GLOBAL_CACHE_PATH
         RUSTLER_PRECOMPILED_FORCE_BUILD_ALL MIX_XDG HEX_CACERTS_PATH TARGET_ARCH TARGET_VENDOR
         TARGET_OS TARGET_ABI HTTP_PROXY NO_PROXY http_proxy https_proxy no_proxy)

    defaults =
      [{"MIX_ENV", "prod"}, {"HTTPS_PROXY", "http://127.0.0.1:1"}] ++
        Enum.map(cleared, &{&1, nil})

    extra_keys = Enum.map(extra, &elem(&1, 0))
    Enum.reject(defaults, &(elem(&1, 0) in extra_keys)) ++ extra
  end

  @doc "Runs `mix args` in `dir` with `mix_env(env)`; returns `{output, status}`."
  @spec mix(Path.t(), [String.t()], [{String.t(), String.t() | nil}]) ::
          {String.t(), non_neg_integer()}
  def mix(dir, args, env) do
    System.cmd("mix", args, cd: dir, env: mix_env(env), stderr_to_stdout: true)
  end

  defp make_writable!(path) do
    for p <- [path | Path.wildcard(Path.join(path, "**"), match_dot: true)] do
      %File.Stat{mode: mode} = File.stat!(p)
      File.chmod!(p, Bitwise.bor(mode, 0o200))
    end

    :ok
  end

  # What the README's topology asks of a droplet, read without evaluating
  # what it reads from the environment (the token): every `System.*` call
  # is replaced by a placeholder before evaluating the block as a config.
  defp readme_topology!(block) do
    quoted =
      block
      |> Code.string_to_quoted!()
      |> Macro.prewalk(fn
        {{:., _, [{:__aliases__, _, [:System]}, _]}, _, _} -> "placeholder"
        other -> other
      end)

    config = Config.Reader.eval!("README.md", with_import(Macro.to_string(quoted)), env: :prod)
    topologies = config |> Keyword.get(:libcluster, []) |> Keyword.get(:topologies, [])

    case for({name, spec} <- topologies, spec[:strategy] == Cluster.Strategy.Droplet, do: name) do
      [name | _] ->
        topology_config = Keyword.get(topologies[name], :config, [])

        port =
          case topology_config[:health_check] do
            {:tcp, opts} -> Keyword.get(opts, :port)
            _ -> nil
          end

        %{
          topology: name,
          tag_name: topology_config[:tag_name],
          node_basename: topology_config[:node_basename],
          network: Keyword.get(topology_config, :network, :private),
          health_check_port: port
        }

      [] ->
        raise "the README's configuration has no Cluster.Strategy.Droplet topology:\n#{block}"
    end
  end

  defp with_import(code) do
    if code =~ ~r/^\s*import Config\b/m, do: code, else: "import Config\n\n" <> code
  end

  @doc """
  The consumer's `config/runtime.exs`: the README's block as it is, then
  test-only keys deep-merged on top of its Droplet topology (Config merges
  keyword lists recursively), then the endpoint's port.
  """
  @spec runtime_exs(String.t(), map(), pos_integer(), pos_integer()) :: String.t()
  def runtime_exs(readme_block, info, interval, port) do
    """
    #{with_import(readme_block)}
    # ---- test-only keys, deep-merged on top of the README's example above ----
    config :libcluster,
      topologies: [
        #{info.topology}: [
          config: [
            api_url: System.fetch_env!(#{inspect(@api_url_env)}),
            polling_interval: #{interval},
            max_requests_per_minute: 100_000,
            max_backoff: 2_000
          ]
        ]
      ]

    # The endpoint the README's health check probes.
    config :consumer_app, http_port: #{port}
    """
  end

  defp mix_exs(vendor, vendored, package) do
    # A build tool, as a user lists it: not part of the application.
    vendored_deps =
      Enum.map_join(vendored, ",\n", fn app ->
        runtime = if app in @source_build_vendored, do: ", runtime: false", else: ""
        "      {:#{app}, path: #{inspect(Path.join(vendor, app))}, override: true#{runtime}}"
      end)

    """
    defmodule ConsumerApp.MixProject do
      use Mix.Project

      def project do
        [
          app: :consumer_app,
          version: "0.1.0",
          elixir: "~> 1.14",
          start_permanent: Mix.env() == :prod,
          deps: deps()
        ]
      end

      def application do
        [extra_applications: [:logger], mod: {ConsumerApp.Application, []}]
      end

      defp deps do
        [
    #{vendored_deps},
          {:libcluster_droplet, path: #{inspect(package)}}
        ]
      end
    end
    """
  end

  defp application_ex do
    """
    defmodule ConsumerApp.Application do
      @moduledoc false
      use Application

      @impl true
      def start(_type, _args) do
        children = [
          {Cluster.Supervisor,
           [Application.get_env(:libcluster, :topologies), [name: ConsumerApp.ClusterSupervisor]]},
          ConsumerApp.Endpoint
        ]

        Supervisor.start_link(children, strategy: :one_for_one, name: ConsumerApp.Supervisor)
      end
    end
    """
  end

  defp endpoint_ex do
    """
    defmodule ConsumerApp.Endpoint do
      @moduledoc false
      # What a Phoenix endpoint is to the health check: a TCP port that
      # accepts connections, here on this node's own address.
      use GenServer

      def start_link(_), do: GenServer.start_link(__MODULE__, [], name: __MODULE__)

      @impl true
      def init([]) do
        port = Application.get_env(:consumer_app, :http_port, 4000)
        opts = [:binary, active: false, reuseaddr: true, backlog: 128, ip: own_address()]
        {:ok, socket} = :gen_tcp.listen(port, opts)
        acceptor = spawn_link(fn -> accept(socket) end)
        {:ok, %{socket: socket, acceptor: acceptor}}
      end

      defp accept(socket) do
        {:ok, conn} = :gen_tcp.accept(socket)
        :gen_tcp.close(conn)
        accept(socket)
      end

      defp own_address do
        [_, host] = node() |> Atom.to_string() |> String.split("@")
        {:ok, ip} = :inet.parse_address(String.to_charlist(host))
        ip
      end
    end
    """
  end

  @doc """
  The droplet of a consumer node at `address`, as the README's topology
  selects it: tagged with its `tag_name`, its address on its network, and
  named its `node_basename` when it has none (nodes are then named after
  droplets).
  """
  @spec droplet(t(), pos_integer(), String.t()) :: map()
  def droplet(%__MODULE__{} = app, id, address) do
    name = if app.node_basename, do: "web-#{id}", else: "app"
    tags = if app.tag_name, do: [app.tag_name], else: []

    ips =
      if app.network == :public,
        do: [private_ip: nil, public_ip: address],
        else: [private_ip: address]

    LibclusterDroplet.FakeAPI.droplet([id: id, name: name, tags: tags] ++ ips)
  end

  @doc "The node name part of every consumer node."
  @spec basename(t()) :: String.t()
  def basename(%__MODULE__{node_basename: basename}), do: basename || "app"

  @doc """
  Starts a consumer node at `address`: its own OS process, running the
  consumer's code, with `DIGITALOCEAN_TOKEN` set to `token` and the test's
  API URL in its environment. Before its application starts, a recorder of
  every nodeup and nodedown (`:net_kernel.monitor_nodes(true, [:nodedown_reason])`)
  runs on it. Options: `:log_level` (default `:error`), `:args` extra `erl`
  arguments, `:sasl_reports` (default `false`: Logger's
  `handle_sasl_reports`, and the console log goes to a buffer that
  `NodeAgent.log/0` reads), `:runtime_exs` (another `config/runtime.exs`),
  `:may_fail` (default `false`: return the node even when the application
  did not start).
  Returns a `LibclusterDroplet.TestCluster` node, so its helpers apply.
  """
  @spec start_node(t(), String.t(), String.t(), String.t(), keyword()) :: TestCluster.t()
  def start_node(%__MODULE__{} = app, address, token, api_url, opts \\ []) do
    name = basename(app)

    args =
      [~c"-setcookie", ~c"#{@cookie}"] ++
        TestCluster.ipv4_dist_args(address) ++
        Enum.map(Keyword.get(opts, :args, []), &String.to_charlist/1) ++
        Enum.flat_map(app.code_paths, &[~c"-pa", String.to_charlist(&1)])

    {:ok, pid, node} =
      :peer.start(%{
        name: String.to_atom(name),
        host: String.to_charlist(address),
        longnames: true,
        connection: :standard_io,
        wait_boot: 60_000,
        env: [
          {~c"#{@token_env}", String.to_charlist(token)},
          {~c"#{@api_url_env}", String.to_charlist(api_url)}
        ],
        args: args
      })

    tc = %TestCluster{pid: pid, node: node, name: name, address: address, ipv6: false}
    level = Keyword.get(opts, :log_level, :error)
    runtime_exs = Keyword.get(opts, :runtime_exs, app.runtime_exs)
    sasl? = Keyword.get(opts, :sasl_reports, false)

    try do
      agent = __MODULE__.NodeAgent
      {^agent, binary, file} = :code.get_object_code(agent)
      {:module, ^agent} = TestCluster.call(tc, :code, :load_binary, [agent, file, binary])

      case TestCluster.call(tc, agent, :boot, [runtime_exs, level, sasl?], 60_000) do
        {:ok, _apps} ->
          tc

        other ->
          if Keyword.get(opts, :may_fail, false),
            do: tc,
            else: raise("consumer node #{node} did not start: #{inspect(other)}")
      end
    rescue
      error ->
        TestCluster.stop(tc)
        reraise error, __STACKTRACE__
    end
  end

  @doc "Every nodedown the node recorded since it booted: `{node, reason, os_time_ms}`."
  @spec nodedowns(TestCluster.t()) :: [{node(), term(), integer()}]
  def nodedowns(node), do: TestCluster.call(node, __MODULE__.NodeAgent, :nodedowns, [])

  @doc """
  Asks each strategy under `ConsumerApp.ClusterSupervisor` on the node for
  its state with `:sys.get_state(pid, timeout)`: `[{topology, :ok | {:no_answer, reason}, ms}]`.
  """
  @spec strategy_answers(TestCluster.t(), timeout()) :: [{atom(), term(), integer()}]
  def strategy_answers(node, timeout \\ 1_000),
    do:
      TestCluster.call(node, __MODULE__.NodeAgent, :strategy_answers, [timeout], timeout + 5_000)
end

defmodule LibclusterDroplet.ConsumerApp.NodeAgent do
  @moduledoc false
  # Loaded into consumer nodes (its object code is sent over): boots the
  # consumer application as a release would and observes the node. None of
  # the consumer application's own code depends on it.

  @recorder __MODULE__.Recorder
  @log_device __MODULE__.LogDevice

  @doc false
  # Everything the console logger printed since boot (a node booted with SASL reports).
  def log do
    :ok = Logger.flush()
    {_input, output} = StringIO.contents(Process.whereis(@log_device))
    output
  end

  def boot(runtime_exs, log_level, sasl_reports?) do
    # Read by Logger when it starts: supervisor and crash reports are then
    # printed, translated, like any log line (what `config :logger,
    # handle_sasl_reports: true` does in a user's app).
    # Loaded first, or loading would reset the setting to its default; and
    # restarted if it runs already, so that it reads it.
    _ = Application.stop(:logger)
    _ = Application.load(:logger)
    Application.put_env(:logger, :handle_sasl_reports, sasl_reports?)
    {:ok, _} = Application.ensure_all_started(:logger)
    :ok = Logger.configure(level: log_level)

    if sasl_reports? do
      {:ok, device} = StringIO.open("")
      Process.register(device, @log_device)
      :ok = Logger.configure_backend(:console, device: device)
    end

    :ok = start_recorder()
    config = Config.Reader.read!(runtime_exs, env: :prod, target: :host)
    :ok = Application.put_all_env(config, persistent: true)
    Application.ensure_all_started(:consumer_app)
  end

  # Records every nodeup and nodedown from now on, with reasons.
  defp start_recorder do
    parent = self()

    pid =
      spawn(fn ->
        :ok = :net_kernel.monitor_nodes(true, [:nodedown_reason])
        send(parent, {:recording, self()})
        record([])
      end)

    Process.register(pid, @recorder)

    receive do
      {:recording, ^pid} -> :ok
    after
      5_000 -> {:error, :recorder_not_started}
    end
  end

  defp record(events) do
    receive do
      {:nodeup, node, _info} ->
        record([{:nodeup, node, nil, System.os_time(:millisecond)} | events])

      {:nodedown, node, info} ->
        reason = Keyword.get(info, :nodedown_reason)
        record([{:nodedown, node, reason, System.os_time(:millisecond)} | events])

      {:get, from} ->
        send(from, {:events, Enum.reverse(events)})
        record(events)
    end
  end

  def events do
    send(@recorder, {:get, self()})

    receive do
      {:events, events} -> events
    after
      5_000 -> raise "the nodedown recorder on #{node()} did not answer"
    end
  end

  def nodedowns do
    for {:nodedown, node, reason, at} <- events(), do: {node, reason, at}
  end

  def strategy_answers(timeout) do
    for {id, pid, _, _} <- Supervisor.which_children(ConsumerApp.ClusterSupervisor) do
      started = System.monotonic_time(:millisecond)

      result =
        if is_pid(pid) do
          try do
            _ = :sys.get_state(pid, timeout)
            :ok
          catch
            :exit, {reason, {:sys, :get_state, _}} -> {:no_answer, reason}
            :exit, reason -> {:no_answer, reason}
          end
        else
          {:no_answer, {:not_running, pid}}
        end

      {id, result, System.monotonic_time(:millisecond) - started}
    end
  end

  # Crashes the running strategy of `topology`: its state is made invalid,
  # so its next message raises (its crash report prints state and message).
  def crash_strategy(topology) do
    {_, pid, _, _} =
      ConsumerApp.ClusterSupervisor
      |> Supervisor.which_children()
      |> List.keyfind(topology, 0)

    :sys.replace_state(pid, fn state -> %{state | members: :not_members} end)
    pid
  end

  def strategies do
    for {id, pid, type, modules} <- Supervisor.which_children(ConsumerApp.ClusterSupervisor),
        do: {id, is_pid(pid), type, modules}
  end

  # What the node runs on: libcluster's version, where Cluster.Supervisor
  # was loaded from, and kernel's settings around a strategy as OTP reads
  # them (both default to true), plus any -connect_all flag.
  def runtime_facts do
    %{
      libcluster_vsn: Application.spec(:libcluster, :vsn),
      cluster_supervisor: :code.which(Cluster.Supervisor),
      strategy: :code.which(Cluster.Strategy.Droplet),
      connect_all: Application.get_env(:kernel, :connect_all, true),
      connect_all_flag: :init.get_argument(:connect_all),
      prevent_overlapping_partitions:
        Application.get_env(:kernel, :prevent_overlapping_partitions, true),
      visible: Node.list(:visible),
      hidden: Node.list(:hidden)
    }
  end
end
