defmodule LibclusterDroplet.BuildTest do
  @moduledoc false
  # The NIF build from mix, as a user meets it: this project as a path
  # dependency of a throwaway consumer project, rebuilt incrementally, and
  # compiled on a machine without cargo.
  use ExUnit.Case, async: true

  @moduletag :build
  @moduletag timeout: 600_000

  @root Path.expand("..", __DIR__)

  setup do
    dir = Path.join(System.tmp_dir!(), "droplet_consumer_#{System.unique_integer([:positive])}")
    File.mkdir_p!(Path.join(dir, "lib"))

    File.write!(Path.join(dir, "mix.exs"), """
    defmodule Consumer.MixProject do
      use Mix.Project

      def project do
        [app: :consumer, version: "0.1.0", elixir: "~> 1.14",
         deps: [{:libcluster_droplet, path: #{inspect(@root)}}]]
      end

      def application, do: [extra_applications: [:logger]]
    end
    """)

    File.write!(Path.join(dir, "lib/consumer.ex"), """
    defmodule Consumer do
      def check do
        {:ok, listener} = :gen_tcp.listen(0, ip: {127, 0, 0, 1})
        {:ok, port} = :inet.port(listener)
        [{"127.0.0.1", {:ok, _}}] = LibclusterDroplet.probe(["127.0.0.1"], port, timeout: 1_000)
        "nif " <> LibclusterDroplet.Native.nif_version() <> " probe ok"
      end
    end
    """)

    on_exit(fn -> File.rm_rf!(dir) end)
    {:ok, dir: dir}
  end

  # Nothing of the outer `mix test` leaks in (LibclusterDroplet.ConsumerApp.mix_env/1);
  # cargo builds where every consumer of this repository does, so only the
  # first of them compiles the crates; no artifact is ever fetched (the
  # base URL is a closed loopback port).
  defp mix(dir, args, env \\ []) do
    env =
      LibclusterDroplet.ConsumerApp.mix_env(
        [
          {"MIX_ENV", "dev"},
          {"CARGO_TARGET_DIR", LibclusterDroplet.ConsumerApp.shared_target_dir(@root)},
          {"LIBCLUSTER_DROPLET_BASE_URL", "http://127.0.0.1:1"}
        ] ++ env
      )

    System.cmd("mix", args, cd: dir, env: env, stderr_to_stdout: true)
  end

  test "a consumer project compiles the NIF, calls it, and does not rebuild it needlessly", %{
    dir: dir
  } do
    assert {out, 0} = mix(dir, ["compile"])
    assert out =~ "Compiling NIF droplet_nif with cargo (release)"

    so = Path.join(dir, "_build/dev/lib/libcluster_droplet/priv/native/libdroplet_nif.so")
    assert File.regular?(so)
    %File.Stat{mtime: mtime, inode: inode} = File.stat!(so, time: :posix)

    assert {out, 0} = mix(dir, ["run", "-e", "IO.puts(Consumer.check())"])
    assert out =~ "nif #{Mix.Project.config()[:version]} probe ok"

    # Second compile without Rust changes: no cargo, the library untouched.
    Process.sleep(1_100)
    assert {out, 0} = mix(dir, ["compile"])
    refute out =~ "Compiling NIF"
    assert %File.Stat{mtime: ^mtime, inode: ^inode} = File.stat!(so, time: :posix)
  end

  test "without cargo on the PATH, compiling says to install Rust", %{dir: dir} do
    # Only the directories of elixir and erl: cargo lives elsewhere (~/.cargo/bin).
    path = LibclusterDroplet.Package.path_without_cargo()

    {out, status} = mix(dir, ["compile"], [{"PATH", path}])
    assert status != 0
    assert out =~ "cargo was not found on the PATH"
    assert out =~ "install it from https://rustup.rs"
    refute out =~ "stacktrace"
    refute out =~ ~r/\(mix [\d.]+\) lib\//
  end
end
