defmodule LibclusterDroplet.Package do
  @moduledoc """
  Helpers of the package and release tests: the Hex package's files as Hex
  would take them, the precompiled NIF made from a copy of exactly them
  (once per test run), throwaway consumer projects, a `PATH` without
  cargo, and a loopback HTTP server for NIF artifacts.
  """

  alias LibclusterDroplet.ConsumerApp

  @typedoc """
  The package copy with its precompiled NIF (`precompiled!/1`): the
  temporary directory holding everything, the package's files, the copy
  of them (its checksum file now lists the artifact), the vendored
  packages' copy, the artifact's name and path, and the precompile task's
  output.
  """
  @type precompiled :: %{
          tmp: Path.t(),
          files: [String.t()],
          package: Path.t(),
          vendor: Path.t(),
          name: String.t(),
          artifact: Path.t(),
          precompile_output: String.t()
        }

  @doc """
  The package's files relative to `root`, as Hex expands the `files` of
  `package`: each entry a file, a directory (taken recursively, dot files
  included) or a wildcard.
  """
  @spec files(Path.t(), [String.t()]) :: [String.t()]
  def files(root, entries) do
    entries
    |> Enum.flat_map(fn entry ->
      case Path.wildcard(Path.join(root, entry), match_dot: true) do
        [] -> raise "package file #{entry} does not exist in #{root}"
        paths -> paths
      end
    end)
    |> Enum.flat_map(fn path ->
      if File.dir?(path),
        do: Path.wildcard(Path.join(path, "**"), match_dot: true),
        else: [path]
    end)
    |> Enum.filter(&File.regular?/1)
    |> Enum.map(&Path.relative_to(&1, root))
    |> Enum.uniq()
    |> Enum.sort()
  end

  @doc "Copies exactly `files` (relative to `root`) to `dest`."
  @spec copy!(Path.t(), [String.t()], Path.t()) :: Path.t()
  def copy!(root, files, dest) do
    for file <- files do
      File.mkdir_p!(Path.dirname(Path.join(dest, file)))
      File.cp!(Path.join(root, file), Path.join(dest, file))
    end

    dest
  end

  @doc """
  The package of the project at `root` with its precompiled NIF, made once
  per test run whichever test asks first: exactly the package's files
  copied to a temporary directory, where `MIX_ENV=prod mix run --no-start
  scripts/precompile.exs` (the repository's script, run on the copy)
  builds the NIF from source (that copy is the root project) and records it in the copy's checksum file. Removed
  when the suite ends.
  """
  @spec precompiled!(Path.t()) :: precompiled()
  def precompiled!(root) do
    key = {__MODULE__, :precompiled}

    :global.trans(
      key,
      fn ->
        with nil <- :persistent_term.get(key, nil) do
          built = build_precompiled!(root)
          :persistent_term.put(key, built)
          built
        end
      end,
      [node()],
      :infinity
    )
  end

  defp build_precompiled!(root) do
    tmp =
      Path.join(
        System.tmp_dir!(),
        "libcluster_droplet_package_#{System.pid()}_#{System.unique_integer([:positive])}"
      )

    ExUnit.after_suite(fn _ -> File.rm_rf(tmp) end)
    files = files(root, LibclusterDroplet.MixProject.package_files())
    package = copy!(root, files, Path.join(tmp, "libcluster_droplet"))
    vendor = Path.join(tmp, "vendor")
    File.cp_r!(ConsumerApp.vendor_dir(root), vendor)
    {_, 0} = System.cmd("chmod", ["-R", "u+w", vendor])
    artifacts = Path.join(tmp, "artifacts")
    script = Path.join(root, "scripts/precompile.exs")

    {out, status} =
      mix(package, ["run", "--no-start", script, "--output", artifacts], [
        {"LIBCLUSTER_DROPLET_VENDOR", vendor},
        {"CARGO_TARGET_DIR", ConsumerApp.shared_target_dir(root)},
        {"RUSTLER_PRECOMPILED_GLOBAL_CACHE_PATH", Path.join(tmp, "precompile_cache")}
      ])

    if status != 0, do: raise("precompile failed (#{status}):\n#{out}")
    [artifact] = Path.wildcard(Path.join(artifacts, "*.so.tar.gz"))

    %{
      tmp: tmp,
      files: files,
      package: package,
      vendor: vendor,
      name: Path.basename(artifact),
      artifact: artifact,
      precompile_output: out
    }
  end

  @doc """
  A `PATH` with only the directories of `elixir`, `erl`, `sh` and `env`;
  raises if cargo is in one of them.
  """
  @spec path_without_cargo() :: String.t()
  def path_without_cargo do
    dirs =
      ["elixir", "erl", "sh", "env"]
      |> Enum.map(&(System.find_executable(&1) |> Path.dirname()))
      |> Enum.uniq()

    if Enum.any?(dirs, &File.exists?(Path.join(&1, "cargo"))),
      do: raise("cargo is in one of #{inspect(dirs)}: these tests need it elsewhere")

    Enum.join(dirs, ":")
  end

  @doc """
  Writes a consumer project in `dir` depending on its own copy of exactly
  `files` of the package at `root` (in `dir/deps_src`, as `deps/` holds it
  for a user: the NIF is installed into its `priv/native`) and on every
  package of `vendor` a user's application would list or Hex would fetch
  (libcluster after libcluster_droplet, which must be compiled after it all
  the same). Options: `:rustler` (list rustler and toml too, as a build
  from source needs; default `false`), `:config` (the body of
  `config/config.exs`). Its `Consumer.check/0` probes a port through the
  NIF and returns `"nif <version> probe ok"`; `Consumer.debug_nifs?/0`
  tells whether the NIF has this repository's test-only functions.
  """
  @spec write_consumer!(Path.t(), Path.t(), [String.t()], Path.t(), keyword()) :: Path.t()
  def write_consumer!(dir, root, files, vendor, opts \\ []) do
    package = copy!(root, files, Path.join(dir, "deps_src/libcluster_droplet"))

    apps =
      Enum.map(
        ~w(libcluster jason telemetry rustler_precompiled castore nimble_options),
        &{&1, ""}
      ) ++
        if(opts[:rustler],
          do: [{"rustler", ", runtime: false"}, {"toml", ", runtime: false"}],
          else: []
        )

    deps =
      Enum.map_join(apps, ",\n", fn {app, runtime} ->
        "{:#{app}, path: #{inspect(Path.join(vendor, app))}, override: true#{runtime}}"
      end)

    File.mkdir_p!(Path.join(dir, "lib"))

    File.write!(Path.join(dir, "mix.exs"), """
    defmodule Consumer.MixProject do
      use Mix.Project

      def project do
        [app: :consumer, version: "0.1.0", elixir: "~> 1.14", deps: deps()]
      end

      def application, do: [extra_applications: [:logger]]

      defp deps do
        [{:libcluster_droplet, path: #{inspect(package)}},
    #{deps}]
      end
    end
    """)

    if config = opts[:config] do
      File.mkdir_p!(Path.join(dir, "config"))
      File.write!(Path.join(dir, "config/config.exs"), "import Config\n" <> config)
    end

    File.write!(Path.join(dir, "lib/consumer.ex"), """
    defmodule Consumer do
      def check do
        {:ok, listener} = :gen_tcp.listen(0, ip: {127, 0, 0, 1})
        {:ok, port} = :inet.port(listener)
        [{"127.0.0.1", {:ok, _}}] = LibclusterDroplet.probe(["127.0.0.1"], port, timeout: 5_000)
        "nif " <> LibclusterDroplet.Native.nif_version() <> " probe ok"
      end

      def debug_nifs? do
        match?({_, _}, LibclusterDroplet.Native.debug_budget())
      rescue
        ErlangError -> false
      end
    end
    """)

    dir
  end

  @doc "Runs `mix args` in `dir` with `ConsumerApp.mix_env(env)`."
  @spec mix(Path.t(), [String.t()], [{String.t(), String.t() | nil}]) ::
          {String.t(), non_neg_integer()}
  def mix(dir, args, env \\ []), do: ConsumerApp.mix(dir, args, env)

  @doc "The NIF libraries installed for a consumer's build (MIX_ENV=prod), by file name."
  @spec installed_nifs(Path.t()) :: [String.t()]
  def installed_nifs(dir) do
    dir
    |> Path.join("_build/prod/lib/libcluster_droplet/priv/native/*.so")
    |> Path.wildcard()
    |> Enum.map(&Path.basename/1)
  end

  @doc "Regular files under `dir`, relative to it."
  @spec tree(Path.t()) :: [String.t()]
  def tree(dir) do
    dir
    |> Path.join("**")
    |> Path.wildcard(match_dot: true)
    |> Enum.filter(&File.regular?/1)
    |> Enum.map(&Path.relative_to(&1, dir))
    |> Enum.sort()
  end

  @doc "The SHA-256 of `data` as the checksum file writes it."
  @spec sha256(binary()) :: String.t()
  def sha256(data), do: "sha256:" <> Base.encode16(:crypto.hash(:sha256, data), case: :lower)
end

defmodule LibclusterDroplet.Package.FileServer do
  @moduledoc """
  A loopback HTTP/1.1 server of in-memory files (`put/3`), recording every
  request line. Absolute-form request targets (`GET http://host:port/path`)
  are served too, which makes it an HTTP proxy for the tests.
  """
  use GenServer

  def start_link(opts \\ []), do: GenServer.start_link(__MODULE__, opts)

  @doc "The base URL: `http://127.0.0.1:<port>`."
  def url(server), do: "http://127.0.0.1:#{port(server)}"
  def port(server), do: GenServer.call(server, :port)
  def put(server, path, body), do: GenServer.call(server, {:put, path, body})
  def requests(server), do: GenServer.call(server, :requests)

  @impl true
  def init(_opts) do
    {:ok, listen} =
      :gen_tcp.listen(0, [:binary, ip: {127, 0, 0, 1}, active: false, reuseaddr: true])

    {:ok, port} = :inet.port(listen)
    server = self()
    acceptor = spawn_link(fn -> accept(listen, server) end)
    {:ok, %{listen: listen, port: port, files: %{}, requests: [], acceptor: acceptor}}
  end

  @impl true
  def handle_call(:port, _from, state), do: {:reply, state.port, state}

  def handle_call({:put, path, body}, _from, state),
    do: {:reply, :ok, put_in(state.files[path], body)}

  def handle_call(:requests, _from, state), do: {:reply, Enum.reverse(state.requests), state}

  def handle_call({:request, line}, _from, state) do
    [_method, target | _] = String.split(line, " ")
    path = URI.parse(target).path
    {:reply, Map.fetch(state.files, path), %{state | requests: [line | state.requests]}}
  end

  defp accept(listen, server) do
    case :gen_tcp.accept(listen) do
      {:ok, conn} ->
        spawn(fn -> serve(conn, server) end)
        accept(listen, server)

      {:error, _} ->
        :ok
    end
  end

  defp serve(conn, server) do
    with {:ok, head} <- read_head(conn, "") do
      [line | _] = String.split(head, "\r\n")

      {status, body} =
        case GenServer.call(server, {:request, line}) do
          {:ok, body} -> {"200 OK", body}
          :error -> {"404 Not Found", "not found"}
        end

      :gen_tcp.send(conn, [
        "HTTP/1.1 #{status}\r\ncontent-length: #{byte_size(body)}\r\n",
        "content-type: application/octet-stream\r\nconnection: close\r\n\r\n",
        body
      ])
    end

    :gen_tcp.close(conn)
  end

  defp read_head(conn, acc) do
    if String.contains?(acc, "\r\n\r\n") do
      {:ok, acc}
    else
      case :gen_tcp.recv(conn, 0, 30_000) do
        {:ok, data} -> read_head(conn, acc <> data)
        error -> error
      end
    end
  end
end
