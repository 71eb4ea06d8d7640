defmodule LibclusterDroplet.ConsumerRelease do
  @moduledoc """
  A `mix release` of the throwaway consumer application
  (`LibclusterDroplet.ConsumerApp`), built and run the way a user deploys
  it, for `test/release_test.exs`.

  `build!/1` compiles the consumer application (`MIX_ENV=prod`), writes the
  deployment guide's `rel/env.sh.eex` (the first ```` ```sh ```` block under
  "## Releases" in guides/deployment.md, verbatim) and runs `mix release`
  with the same environment. Release nodes are then
  started from `bin/consumer_app start`, each its own OS process, with the
  environment a droplet gives it (`node_env/2`, `start_node/2`);
  `bin/consumer_app rpc` and `stop` run with that same environment
  (`command/3`), and `remote` on a pseudo-terminal (`remote/4`).

  ## Distribution without epmd (test-only)

  On droplets, nodes find each other through epmd on TCP 4369. Here, as in
  `LibclusterDroplet.TestCluster`, every node listens on its own loopback
  address on one shared port (`DROPLET_TEST_DIST_PORT`) and no epmd runs,
  so that test runs on a shared machine never meet. That takes two things
  the guide does not ask of users:

    * `ELIXIR_ERL_OPTIONS` holds `TestCluster.ipv4_dist_args/1` for the
      node's address (`-start_epmd false -erl_epmd_port PORT` and the
      listening interface). The release's scripts pass it to every VM they
      start, the node's and the ones of `rpc`, `remote` and `stop`, so it is
      part of the node's environment like any other variable;
    * `rel/remote.vm.args.eex` holds `-dist_listen false` (OTP 25): the VMs
      of `rpc`, `remote` and `stop` only connect out, so they do not try to
      listen on the running node's own address and port. With epmd, they
      listen on a random port, and need nothing of the sort.
  """

  alias LibclusterDroplet.{ConsumerApp, TestCluster}

  @app "consumer_app"
  @metadata_env "DROPLET_METADATA_URL"

  @typedoc """
  A built release: the consumer application it came from, the release's
  root directory and its `bin/consumer_app`, `rel/env.sh.eex` as written (the
  guide's block) and how long `mix release` took.
  """
  @type t :: %__MODULE__{
          app: ConsumerApp.t(),
          root: Path.t(),
          bin: Path.t(),
          env_sh: String.t(),
          release_ms: non_neg_integer()
        }

  defstruct [:app, :root, :bin, :env_sh, :release_ms]

  @doc "The environment variable the guide's `env.sh.eex` reads the metadata base URL from."
  @spec metadata_env() :: String.t()
  def metadata_env, do: @metadata_env

  @doc """
  The deployment guide's `rel/env.sh.eex`: the first ```` ```sh ```` block
  under "## Releases" in `guides/deployment.md` of the project at `root`.
  Raises if the section or the block is missing.
  """
  @spec env_sh!(Path.t()) :: String.t()
  def env_sh!(root) do
    guide = Path.join(root, "guides/deployment.md")
    text = File.read!(guide)

    with [_, section] <- Regex.run(~r/^## Releases\n(.*?)(?=^## |\z)/ms, text),
         [_, code] <- Regex.run(~r/^```sh\n(.*?)^```/ms, section) do
      code
    else
      _ -> raise "#{guide}: no ```sh block under \"## Releases\""
    end
  end

  @doc """
  Builds the consumer application (see `ConsumerApp.build!/1`, same
  options) and its release, with the deployment guide's `rel/env.sh.eex`
  (`:docs_root`, default `:root`, holds `guides/`) and the test-only
  `rel/remote.vm.args.eex`. Removes everything it wrote if it fails.
  """
  @spec build!(keyword()) :: t()
  def build!(opts) do
    env_sh = env_sh!(Keyword.get_lazy(opts, :docs_root, fn -> Keyword.fetch!(opts, :root) end))
    app = ConsumerApp.build!(Keyword.delete(opts, :docs_root))

    try do
      File.mkdir_p!(Path.join(app.dir, "rel"))
      File.write!(Path.join(app.dir, "rel/env.sh.eex"), env_sh)

      File.write!(Path.join(app.dir, "rel/remote.vm.args.eex"), """
      ## Test-only (see LibclusterDroplet.ConsumerRelease): nodes run without
      ## epmd on one shared port, so rpc/remote/stop must not listen at all.
      -dist_listen false
      """)

      started = System.monotonic_time(:millisecond)
      {out, status} = ConsumerApp.mix(app.dir, ["release", "--overwrite"], app.env)

      if status != 0,
        do: raise("mix release of the consumer application failed (#{status}):\n#{out}")

      release_root = Path.join(app.dir, "_build/prod/rel/#{@app}")

      %__MODULE__{
        app: app,
        root: release_root,
        bin: Path.join(release_root, "bin/#{@app}"),
        env_sh: env_sh,
        release_ms: System.monotonic_time(:millisecond) - started
      }
    rescue
      error ->
        ConsumerApp.cleanup(app)
        reraise error, __STACKTRACE__
    end
  end

  @doc "Removes every directory the build wrote (the release is inside them)."
  @spec cleanup(t()) :: :ok
  def cleanup(%__MODULE__{app: app}), do: ConsumerApp.cleanup(app)

  @doc """
  The environment a droplet at `address` gives every `bin/consumer_app`
  command: the token, the fake API's URL (the test-only key of the
  consumer's `config/runtime.exs`), the cookie, the metadata base URL and
  the test-only distribution arguments (see the moduledoc). Variables that
  would change what the release's scripts do are unset, as are proxies, so
  that curl goes straight to the loopback metadata server.
  """
  @spec node_env(String.t(), keyword()) :: [{String.t(), String.t() | nil}]
  def node_env(address, opts) do
    # The scripts split the variable on blanks: none may be inside an
    # argument (`inspect/1` writes `{127, 1, 0, 2}`).
    dist =
      address
      |> TestCluster.ipv4_dist_args()
      |> Enum.map_join(" ", &String.replace(to_string(&1), ~r/\s+/, ""))

    [
      {"DIGITALOCEAN_TOKEN", Keyword.fetch!(opts, :token)},
      {ConsumerApp.api_url_env(), Keyword.fetch!(opts, :api_url)},
      {"RELEASE_COOKIE", Keyword.fetch!(opts, :cookie)},
      {@metadata_env, Keyword.fetch!(opts, :metadata_url)},
      {"ELIXIR_ERL_OPTIONS", dist}
    ] ++
      Enum.map(
        ~w(RELEASE_NODE RELEASE_DISTRIBUTION RELEASE_NAME RELEASE_VSN RELEASE_ROOT RELEASE_TMP
           RELEASE_MODE RELEASE_VM_ARGS RELEASE_REMOTE_VM_ARGS RELEASE_SYS_CONFIG RELEASE_PROG
           ERL_AFLAGS ERL_FLAGS ERL_ZFLAGS ERL_LIBS MIX_ENV
           http_proxy HTTP_PROXY https_proxy HTTPS_PROXY all_proxy ALL_PROXY),
        &{&1, nil}
      )
  end

  @doc """
  Runs `bin/consumer_app <args>` to completion with `env` (a list as
  `node_env/2` returns; `{name, nil}` unsets). Returns `{output, status}`,
  stderr included in the output.
  """
  @spec command(t(), [String.t()], [{String.t(), String.t() | nil}]) ::
          {String.t(), non_neg_integer()}
  def command(%__MODULE__{bin: bin, root: root}, args, env) do
    # The cwd matters: ELIXIR_ERL_OPTIONS is expanded unquoted by the
    # scripts, so `[{reuseaddr,true}]` is a glob; the release root holds no
    # one-letter file it could match.
    System.cmd(bin, args, env: env, cd: root, stderr_to_stdout: true)
  end

  @doc """
  Runs `bin/consumer_app remote` with `env` on a pseudo-terminal (IEx
  ignores `--remsh` without one and runs a local shell instead), driven like
  a person at the keyboard: `steps` are `{:await, regex}` (wait until the
  output so far matches) and `{:type, text}`, in order. Gives up after
  `timeout` ms in all. Returns `{output, exit status}` once the command has
  exited; a command that is still running after the last step is killed
  (status `:killed`).

  `script` (util-linux) provides the terminal, and the test types into its
  standard input, a pipe kept open until the command is done.
  """
  @spec remote(
          t(),
          [{String.t(), String.t() | nil}],
          [{:await, Regex.t()} | {:type, iodata()}],
          timeout()
        ) :: {String.t(), non_neg_integer() | :killed}
  def remote(%__MODULE__{bin: bin, root: root}, env, steps, timeout) do
    script = System.find_executable("script") || raise "`script` (util-linux) is not installed"
    deadline = System.monotonic_time(:millisecond) + timeout

    port =
      Port.open({:spawn_executable, script}, [
        :binary,
        :exit_status,
        :stderr_to_stdout,
        # -q: no banner; -e: its exit status is the command's; -f: flush at once.
        args: ["-qefc", "#{bin} remote", "/dev/null"],
        env: port_env(env),
        cd: root
      ])

    {:os_pid, os_pid} = Port.info(port, :os_pid)

    # Whatever happens, no terminal session outlives the call (`script`
    # gone, its command gets SIGHUP). Only a session still running is
    # killed: the pid of one that exited may already be another process's.
    kill = fn ->
      _ = System.cmd("kill", ["-KILL", "#{os_pid}"], stderr_to_stdout: true)
      Port.close(port)
    end

    try do
      run_steps(port, steps, "", deadline)
    catch
      kind, reason ->
        kill.()
        :erlang.raise(kind, reason, __STACKTRACE__)
    else
      {_output, :killed} = result ->
        kill.()
        result

      result ->
        result
    end
  end

  defp run_steps(port, [], output, deadline), do: await_exit(port, output, deadline)

  defp run_steps(port, [{:type, text} | steps], output, deadline) do
    true = Port.command(port, text)
    run_steps(port, steps, output, deadline)
  end

  defp run_steps(port, [{:await, regex} | rest] = steps, output, deadline) do
    if output =~ regex do
      run_steps(port, rest, output, deadline)
    else
      case receive_output(port, output, deadline) do
        {:data, output} -> run_steps(port, steps, output, deadline)
        {:exit, output, status} -> {output, status}
        {:timeout, output} -> {output, :killed}
      end
    end
  end

  defp await_exit(port, output, deadline) do
    case receive_output(port, output, deadline) do
      {:data, output} -> await_exit(port, output, deadline)
      {:exit, output, status} -> {output, status}
      {:timeout, output} -> {output, :killed}
    end
  end

  defp receive_output(port, output, deadline) do
    receive do
      {^port, {:data, data}} -> {:data, output <> data}
      {^port, {:exit_status, status}} -> {:exit, output, status}
    after
      max(deadline - System.monotonic_time(:millisecond), 0) -> {:timeout, output}
    end
  end

  @doc false
  def port_env(env),
    do: Enum.map(env, fn {k, v} -> {~c"#{k}", if(v, do: ~c"#{v}", else: false)} end)

  @doc """
  Starts `bin/consumer_app start` with `env` as an OS process of its own,
  under a `LibclusterDroplet.ConsumerRelease.Node` linked to the caller.
  """
  @spec start_node(t(), [{String.t(), String.t() | nil}]) :: pid()
  def start_node(%__MODULE__{} = rel, env) do
    {:ok, pid} = __MODULE__.Node.start_link(rel.bin, ["start"], env, rel.root)
    pid
  end
end

defmodule LibclusterDroplet.ConsumerRelease.Node do
  @moduledoc """
  One release node: `bin/consumer_app start` run under a small `sh`
  wrapper, in a port owned by this process, which collects the node's
  output and its exit status.

  The node must never outlive the test, even one killed without running
  its `on_exit`: the wrapper reads its standard input, which is the port,
  and sends the node SIGTERM (the VM then stops as with `System.stop/0`)
  when it closes, which the port does when this process or the whole test
  VM exits. `stop/2` does the same and waits for the node to exit,
  escalating to SIGKILL.
  """
  use GenServer

  # The node runs in the background with its own standard input closed;
  # the wrapper prints its pid, waits for it and exits with its status. A
  # watcher blocks on the wrapper's standard input (kept on fd 3: an
  # asynchronous command's own standard input is /dev/null) and kills the
  # node at EOF.
  @wrapper ~S"""
  exec 3<&0
  "$@" </dev/null 3<&- &
  node=$!
  echo "release-node-pid $node"
  ( while read -r _line <&3; do :; done; kill -TERM "$node" 2>/dev/null ) &
  watcher=$!
  exec 3<&-
  status=0
  wait "$node" || status=$?
  kill "$watcher" 2>/dev/null
  exit "$status"
  """

  @doc "Starts `executable args` with `env` in `cd`, linked to the caller."
  @spec start_link(Path.t(), [String.t()], list(), Path.t()) :: GenServer.on_start()
  def start_link(executable, args, env, cd),
    do: GenServer.start_link(__MODULE__, {executable, args, env, cd})

  @doc "The node's output so far (stdout and stderr)."
  @spec output(pid()) :: String.t()
  def output(node), do: GenServer.call(node, :output)

  @doc "`{:exited, status}` once the node's process has exited, else `:running`."
  @spec status(pid()) :: :running | {:exited, non_neg_integer()}
  def status(node), do: GenServer.call(node, :status)

  @doc """
  Makes sure the node's process is gone: SIGTERM, then SIGKILL if it has
  not exited after `grace` ms. Returns its exit status.
  """
  @spec stop(pid(), timeout()) :: non_neg_integer()
  def stop(node, grace \\ 30_000), do: GenServer.call(node, {:stop, grace}, grace + 30_000)

  @impl true
  def init({executable, args, env, cd}) do
    Process.flag(:trap_exit, true)

    port =
      Port.open({:spawn_executable, "/bin/sh"}, [
        :binary,
        :exit_status,
        :stderr_to_stdout,
        args: ["-c", @wrapper, "release-node", executable | args],
        env: LibclusterDroplet.ConsumerRelease.port_env(env),
        cd: cd
      ])

    {:ok, %{port: port, output: "", node_pid: nil, status: :running, waiting: []}}
  end

  @impl true
  def handle_call(:output, _from, state), do: {:reply, state.output, state}
  def handle_call(:status, _from, state), do: {:reply, state.status, state}

  def handle_call({:stop, _grace}, _from, %{status: {:exited, status}} = state),
    do: {:reply, status, state}

  def handle_call({:stop, grace}, from, state) do
    signal(state, "TERM")
    Process.send_after(self(), :kill, grace)
    {:noreply, %{state | waiting: [from | state.waiting]}}
  end

  @impl true
  def handle_info({port, {:data, data}}, %{port: port} = state) do
    output = state.output <> data

    node_pid =
      state.node_pid ||
        case Regex.run(~r/^release-node-pid (\d+)$/m, output) do
          [_, pid] -> pid
          nil -> nil
        end

    {:noreply, %{state | output: output, node_pid: node_pid}}
  end

  def handle_info({port, {:exit_status, status}}, %{port: port} = state) do
    for from <- state.waiting, do: GenServer.reply(from, status)
    {:noreply, %{state | status: {:exited, status}, waiting: []}}
  end

  def handle_info(:kill, %{status: :running} = state) do
    signal(state, "KILL")
    {:noreply, state}
  end

  def handle_info(_msg, state), do: {:noreply, state}

  @impl true
  def terminate(_reason, %{status: :running} = state) do
    # Closing the port closes the wrapper's standard input: it stops the
    # node. SIGTERM as well, in case the wrapper is gone already.
    signal(state, "TERM")
    Port.close(state.port)
  catch
    _, _ -> :ok
  end

  def terminate(_reason, _state), do: :ok

  defp signal(%{node_pid: nil}, _signal), do: :ok

  defp signal(%{node_pid: pid}, signal) do
    _ = System.cmd("kill", ["-#{signal}", pid], stderr_to_stdout: true)
    :ok
  end
end
