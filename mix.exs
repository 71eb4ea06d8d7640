defmodule Mix.Tasks.Compile.DropletNif do
  @moduledoc """
  Builds the `droplet_nif` Rust crate with cargo (release profile) and puts
  the shared library at `priv/native/libdroplet_nif.so` inside the
  application's build directory, where `LibclusterDroplet.Native` loads it.

  It lives in `mix.exs` because the Hex registry (and so `rustler`'s mix
  package and `elixir_make`) is out of reach, and a compiler defined here is
  available both in this repository and when this project is a dependency.

  Cargo is only invoked when a Rust source, a `Cargo.toml`, `Cargo.lock` or
  the feature set changed since the library was last installed, so a second
  `mix compile` costs a few `stat` calls. Set `CARGO` to choose the cargo
  binary; otherwise it is looked up on the `PATH`.
  """
  use Mix.Task.Compiler

  @crate "droplet_nif"
  @root __DIR__

  @impl true
  def run(_args) do
    so = installed_library()
    stamp = stamp_path()
    features = features()

    if stale?(so, stamp, features) do
      build!(features)
      install!(so)
      File.write!(stamp, Enum.join(features, ","))
      {:ok, []}
    else
      {:noop, []}
    end
  end

  @impl true
  def clean do
    File.rm(installed_library())
    File.rm(stamp_path())
    :ok
  end

  @doc false
  def installed_library,
    do: Path.join([Mix.Project.app_path(), "priv", "native", "lib#{@crate}.so"])

  defp stamp_path, do: Path.join(Mix.Project.app_path(), ".#{@crate}.features")

  # The panic-on-purpose NIF exists only in the test build of this project.
  defp features do
    if Mix.env() == :test and Mix.Project.config()[:app] == :libcluster_droplet,
      do: ["test-panic"],
      else: []
  end

  defp stale?(so, stamp, features) do
    sources =
      Path.wildcard(Path.join(@root, "native/*/src/**/*.rs")) ++
        Path.wildcard(Path.join(@root, "native/*/Cargo.toml")) ++
        Enum.filter(
          [Path.join(@root, "Cargo.toml"), Path.join(@root, "Cargo.lock")],
          &File.exists?/1
        )

    File.read(stamp) != {:ok, Enum.join(features, ",")} or Mix.Utils.stale?(sources, [so])
  end

  defp build!(features) do
    cargo = cargo!()

    args =
      ["build", "--release", "--manifest-path", Path.join(@root, "Cargo.toml"), "-p", @crate] ++
        Enum.flat_map(features, &["--features", "#{@crate}/#{&1}"])

    Mix.shell().info("Compiling NIF #{@crate} with cargo (release)")

    case System.cmd(cargo, args, into: IO.stream(:stdio, :line), stderr_to_stdout: true, cd: @root) do
      {_, 0} ->
        :ok

      {_, status} ->
        Mix.raise(
          "cargo build of the #{@crate} NIF failed (exit status #{status}); see its output above"
        )
    end
  end

  defp cargo! do
    case System.get_env("CARGO") || System.find_executable("cargo") do
      nil ->
        Mix.raise("""
        cargo was not found on the PATH.

        libcluster_droplet compiles a Rust NIF and needs a Rust toolchain:
        install it from https://rustup.rs (or your OS packages), make sure
        `cargo` is on the PATH (or set CARGO=/path/to/cargo), then run
        `mix compile` again.
        """)

      cargo ->
        cargo
    end
  end

  defp install!(so) do
    built = Path.join([target_dir(), "release", built_name()])

    unless File.exists?(built) do
      Mix.raise("cargo finished but #{built} does not exist")
    end

    File.mkdir_p!(Path.dirname(so))
    # Copy then rename: a VM that has the old library mapped keeps its inode.
    tmp = so <> ".tmp"
    File.cp!(built, tmp)
    File.rename!(tmp, so)
  end

  defp target_dir do
    case System.get_env("CARGO_TARGET_DIR") do
      nil -> Path.join(@root, "target")
      dir -> Path.expand(dir, @root)
    end
  end

  defp built_name do
    case :os.type() do
      {:unix, :darwin} -> "lib#{@crate}.dylib"
      {:win32, _} -> "#{@crate}.dll"
      _ -> "lib#{@crate}.so"
    end
  end
end

defmodule LibclusterDroplet.MixProject do
  use Mix.Project

  @version "0.1.0"

  def project do
    [
      app: :libcluster_droplet,
      version: @version,
      elixir: "~> 1.14",
      start_permanent: Mix.env() == :prod,
      compilers: [:droplet_nif] ++ Mix.compilers(),
      elixirc_paths: elixirc_paths(Mix.env()),
      deps: [],
      description: "libcluster strategy for DigitalOcean Droplets, with a Rust NIF core",
      docs: [main: "readme"]
    ]
  end

  def application do
    [extra_applications: [:logger] ++ support_applications(Mix.env())]
  end

  # The fake DigitalOcean API in test/support serves HTTPS with certificates
  # made at run time; the library itself needs none of these.
  defp support_applications(:prod), do: []
  defp support_applications(_), do: [:crypto, :public_key, :ssl, :inets]

  # The fake DigitalOcean API is shared by the tests, `make demo` and `bench/`.
  defp elixirc_paths(:prod), do: ["lib"]
  defp elixirc_paths(_), do: ["lib", "test/support"]
end
