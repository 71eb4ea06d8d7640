defmodule LibclusterDroplet.NifBuildTest do
  @moduledoc false
  # The pieces of mix/droplet_nif.exs and mix.exs that need no consumer
  # build: targets and names, the checksum file, cargo's arguments and
  # directory, the downloader's TLS, proxies and URL rules, the optional
  # dependencies, and the versions agreeing with each other.
  use ExUnit.Case, async: true

  alias LibclusterDroplet.{FakeAPI, NifBuild, Package}
  alias LibclusterDroplet.Package.FileServer

  @root Path.expand("..", __DIR__)
  @version Mix.Project.config()[:version]

  describe "versions" do
    test "the NIF, the Rust crates and the package share one version" do
      assert @version == "2.0.0"
      assert LibclusterDroplet.Native.nif_version() == @version

      for crate <- ~w(droplet_core droplet_nif) do
        toml = File.read!(Path.join(@root, "native/#{crate}/Cargo.toml"))
        assert toml =~ ~s(\nversion = "#{@version}"\n), crate
      end
    end

    test "the artifact's NIF version is the one rustler is built with" do
      toml = File.read!(Path.join(@root, "native/droplet_nif/Cargo.toml"))
      [major, minor] = Regex.run(~r/"nif_version_(\d+)_(\d+)"/, toml, capture: :all_but_first)
      assert NifBuild.nif_version() == "#{major}.#{minor}"
    end

    test "the release profile strips symbols, uses fat LTO and keeps unwinding panics" do
      toml = File.read!(Path.join(@root, "Cargo.toml"))

      [profile] =
        Regex.run(~r/\[profile\.release\](.*?)(?=^\[|\z)/ms, toml, capture: :all_but_first)

      assert profile =~ ~r/^strip = true$/m
      assert profile =~ ~r/^lto = "fat"$/m
      assert profile =~ ~r/^panic = "unwind"$/m
    end
  end

  describe "targets and artifact names" do
    test "the target triple of a BEAM's system architecture" do
      for {arch, target} <- [
            {"x86_64-pc-linux-gnu", "x86_64-unknown-linux-gnu"},
            {"x86_64-unknown-linux-musl", "x86_64-unknown-linux-musl"},
            {"aarch64-unknown-linux-gnu", "aarch64-unknown-linux-gnu"},
            {"aarch64-alpine-linux-musl", "aarch64-unknown-linux-musl"},
            {"aarch64-apple-darwin23.4.0", "aarch64-apple-darwin"},
            {"x86_64-apple-darwin21.6.0", "x86_64-apple-darwin"}
          ] do
        assert NifBuild.target_from_arch(arch) == {:ok, target}, arch
        assert target in NifBuild.targets()
      end

      assert {:error, message} = NifBuild.target_from_arch("riscv64-unknown-linux-gnu")
      assert message =~ "riscv64-unknown-linux-gnu"
      assert {:error, _} = NifBuild.target_from_arch("x86_64-pc-windows-msvc")
    end

    test "LIBCLUSTER_DROPLET_TARGET overrides the detected target" do
      assert NifBuild.target(%{"LIBCLUSTER_DROPLET_TARGET" => "aarch64-unknown-linux-musl"}) ==
               {:ok, "aarch64-unknown-linux-musl"}

      assert {:ok, host} = NifBuild.target(%{})
      assert host in NifBuild.targets()
    end

    test "artifacts are named like rustler_precompiled's" do
      assert NifBuild.artifact_name("2.0.0", "x86_64-unknown-linux-gnu") ==
               "libdroplet_nif-v2.0.0-nif-2.16-x86_64-unknown-linux-gnu.so.tar.gz"

      checksums = %{
        NifBuild.artifact_name("2.0.0", "aarch64-apple-darwin") => "sha256:00",
        NifBuild.artifact_name("2.0.0", "x86_64-unknown-linux-musl") => "sha256:01",
        NifBuild.artifact_name("1.9.0", "x86_64-unknown-linux-gnu") => "sha256:02"
      }

      assert Enum.sort(NifBuild.listed_targets(checksums, "2.0.0")) ==
               ["aarch64-apple-darwin", "x86_64-unknown-linux-musl"]
    end

    test "the default base URL is this version's GitHub release; the env var, then the " <>
           "config, change it" do
      assert NifBuild.base_url("2.0.0", %{}) ==
               "https://github.com/#{NifBuild.github_owner()}/libcluster_droplet/releases/download/v2.0.0"

      assert NifBuild.base_url("2.0.0", %{"LIBCLUSTER_DROPLET_BASE_URL" => "https://m.example/n"}) ==
               "https://m.example/n"

      Application.put_env(:libcluster_droplet, :precompiled_base_url, "https://c.example/n")

      try do
        assert NifBuild.base_url("2.0.0", %{}) == "https://c.example/n"

        assert NifBuild.base_url("2.0.0", %{"LIBCLUSTER_DROPLET_BASE_URL" => "https://e.example"}) ==
                 "https://e.example"
      after
        Application.delete_env(:libcluster_droplet, :precompiled_base_url)
      end
    end

    test "the cache directory: LIBCLUSTER_DROPLET_CACHE_DIR, else XDG_CACHE_HOME, else the " <>
           "user cache" do
      assert NifBuild.cache_dir(%{"LIBCLUSTER_DROPLET_CACHE_DIR" => "/var/cache/x"}) ==
               "/var/cache/x"

      assert NifBuild.cache_dir(%{"XDG_CACHE_HOME" => "/home/u/.c"}) ==
               "/home/u/.c/libcluster_droplet"

      assert NifBuild.cache_dir(%{}) =~ ~r/libcluster_droplet$/
    end
  end

  describe "the checksum file" do
    test "the repository's is a map of artifact names to sha256 sums of this version" do
      checksums = NifBuild.read_checksums()
      assert is_map(checksums)

      for {name, sum} <- checksums do
        assert sum =~ ~r/^sha256:[0-9a-f]{64}$/
        assert [_] = NifBuild.listed_targets(%{name => sum}, @version)
      end
    end

    test "is written as mix format writes it and read back as data, never evaluated" do
      dir =
        Path.join(
          System.tmp_dir!(),
          "nif_build_test_#{System.pid()}_#{System.unique_integer([:positive])}"
        )

      File.mkdir_p!(dir)
      on_exit(fn -> File.rm_rf!(dir) end)
      path = Path.join(dir, "checksum.exs")

      checksums = %{
        NifBuild.artifact_name("2.0.0", "x86_64-unknown-linux-gnu") => NifBuild.sha256("a"),
        NifBuild.artifact_name("2.0.0", "aarch64-apple-darwin") => NifBuild.sha256("b")
      }

      NifBuild.write_checksums(path, checksums)
      text = File.read!(path)
      assert IO.iodata_to_binary(Code.format_string!(text)) <> "\n" == text
      assert NifBuild.read_checksums(path) == checksums

      File.write!(path, ~s|%{"a" => System.halt(1)}|)
      assert_raise Mix.Error, ~r/must be a map/, fn -> NifBuild.read_checksums(path) end
      assert NifBuild.read_checksums(Path.join(dir, "absent.exs")) == %{}
    end

    test "a mismatch names both sums" do
      expected = NifBuild.sha256("the real one")
      assert NifBuild.verify("f.so.tar.gz", "the real one", expected) == :ok
      assert {:error, message} = NifBuild.verify("f.so.tar.gz", "another", expected)
      assert message =~ "f.so.tar.gz"
      assert message =~ expected
      assert message =~ NifBuild.sha256("another")
    end
  end

  describe "cargo" do
    test "builds the release profile of the NIF crate with exactly Cargo.lock" do
      args = NifBuild.cargo_args([])
      assert Enum.take(args, 3) == ["build", "--release", "--locked"]
      assert ["-p", "droplet_nif"] == Enum.drop_while(args, &(&1 != "-p")) |> Enum.take(2)
      assert "--locked" in NifBuild.cargo_args(["test-panic"], "aarch64-apple-darwin")
    end

    test "builds in the build path of the project, or in CARGO_TARGET_DIR" do
      assert NifBuild.target_dir(%{}) ==
               Path.join(Mix.Project.build_path(), "native/libcluster_droplet")

      refute String.starts_with?(NifBuild.target_dir(%{}), Path.join(@root, "target"))
      assert NifBuild.target_dir(%{"CARGO_TARGET_DIR" => "/tmp/t"}) == "/tmp/t"
    end

    test "this repository always builds from source (its tests need the test-only NIFs)" do
      assert Mix.Tasks.Compile.DropletNif.root_project?()
      assert Mix.Tasks.Compile.DropletNif.source_build?(%{})
    end
  end

  describe "downloads" do
    test "https only, or plain http to a loopback host" do
      assert NifBuild.check_url(URI.parse("https://github.com/x")) == :ok
      assert NifBuild.check_url(URI.parse("http://127.0.0.1:4000/x")) == :ok
      assert NifBuild.check_url(URI.parse("http://127.3.4.5/x")) == :ok
      assert NifBuild.check_url(URI.parse("http://[::1]:80/x")) == :ok
      assert NifBuild.check_url(URI.parse("http://localhost/x")) == :ok
      assert {:error, message} = NifBuild.check_url(URI.parse("http://user:pw@mirror.example/x"))
      assert message =~ "plain http is only allowed to loopback hosts"
      refute message =~ "pw"
      assert {:error, _} = NifBuild.check_url(URI.parse("http://10.0.0.1/x"))
      assert {:error, _} = NifBuild.check_url(URI.parse("ftp://mirror.example/x"))

      # Refused before any connection is attempted.
      assert {:error, "http://mirror.invalid/x: plain http" <> _} =
               NifBuild.http_get("http://mirror.invalid/x", %{})
    end

    test "TLS verifies the peer against the OS's CA certificates and checks the host name" do
      opts = NifBuild.ssl_options("github.com")
      assert opts[:verify] == :verify_peer
      assert length(opts[:cacerts]) > 10
      assert opts[:server_name_indication] == ~c"github.com"
      assert [match_fun: fun] = opts[:customize_hostname_check]
      assert is_function(fun)
    end

    test "a server whose certificate no trusted CA signed is refused" do
      api = start_supervised!({FakeAPI, token: "t", tls: true})
      assert "https://" <> _ = url = FakeAPI.url(api)
      assert {:error, message} = NifBuild.http_get(url <> "/anything.so.tar.gz", %{})
      assert message =~ "TLS"
      assert message =~ ~r/unknown ca/i
    end

    test "a loopback server's file, directly or through HTTP_PROXY; NO_PROXY bypasses it" do
      server = start_supervised!({FileServer, []}, id: :server)
      FileServer.put(server, "/f.so.tar.gz", "the file")
      assert NifBuild.http_get(FileServer.url(server) <> "/f.so.tar.gz", %{}) == {:ok, "the file"}
      assert {:error, "HTTP 404"} = NifBuild.http_get(FileServer.url(server) <> "/other", %{})

      # A "proxy" that serves the file for any host: the URL's own port is closed.
      proxy = start_supervised!({FileServer, []}, id: :proxy)
      FileServer.put(proxy, "/f.so.tar.gz", "from the proxy")
      {:ok, listen} = :gen_tcp.listen(0, ip: {127, 0, 0, 1})
      {:ok, closed} = :inet.port(listen)
      :gen_tcp.close(listen)
      url = "http://127.0.0.1:#{closed}/f.so.tar.gz"

      assert NifBuild.http_get(url, %{"HTTP_PROXY" => FileServer.url(proxy)}) ==
               {:ok, "from the proxy"}

      assert NifBuild.http_get(url, %{"http_proxy" => FileServer.url(proxy)}) ==
               {:ok, "from the proxy"}

      assert FileServer.requests(proxy) == List.duplicate("GET #{url} HTTP/1.1", 2)

      assert {:error, message} =
               NifBuild.http_get(url, %{
                 "HTTP_PROXY" => FileServer.url(proxy),
                 "NO_PROXY" => "example.com,127.0.0.1"
               })

      assert message =~ "econnrefused"
      assert length(FileServer.requests(proxy)) == 2
    end

    test "HTTPS_PROXY and credentials become httpc's https_proxy and proxy_auth" do
      env = %{
        "HTTPS_PROXY" => "http://proxy.internal:3128",
        "HTTP_PROXY" => "proxy.internal:8080",
        "NO_PROXY" => ".corp.example,localhost"
      }

      no_proxy = [~c"corp.example", ~c"*.corp.example", ~c"localhost", ~c"*.localhost"]

      assert NifBuild.proxy_options(env) == [
               proxy: {{~c"proxy.internal", 8080}, no_proxy},
               https_proxy: {{~c"proxy.internal", 3128}, no_proxy}
             ]

      assert NifBuild.proxy_options(%{}) == []
    end
  end

  describe "optional dependencies" do
    test "the published package declares libcluster and telemetry as optional" do
      assert LibclusterDroplet.MixProject.hex_optional_deps() == [
               {:libcluster, "~> 3.3", optional: true},
               {:telemetry, "~> 0.4 or ~> 1.0", optional: true}
             ]

      # As mix.exs evaluates them: in this repository only Jason, for the
      # fake API of the tests, the demo and the benchmarks; the Hex ones when
      # publishing.
      code =
        "Mix.start(); Mix.Project.in_project(:libcluster_droplet, \".\", " <>
          "fn _ -> IO.write(inspect(Mix.Project.config()[:deps])) end)"

      run = fn env, args ->
        {out, 0} =
          System.cmd("elixir", ["-e", code | args],
            cd: @root,
            env: [{"MIX_ENV", "test"} | env],
            stderr_to_stdout: true
          )

        out
      end

      hex = inspect(LibclusterDroplet.MixProject.hex_optional_deps())

      assert run.([{"LIBCLUSTER_DROPLET_PUBLISH", nil}], []) ==
               inspect(jason: [path: "../shared/vendor/jason", only: [:dev, :test]])

      assert run.([{"LIBCLUSTER_DROPLET_PUBLISH", "1"}], []) == hex
      assert run.([{"LIBCLUSTER_DROPLET_PUBLISH", nil}], ["--", "hex.publish"]) == hex
    end

    test "as a dependency, each is declared as the depending project declares it, optional" do
      mirror = &LibclusterDroplet.MixProject.mirror/2

      assert mirror.({:libcluster, "~> 3.5"}, "/app") == {:libcluster, "~> 3.5", optional: true}

      assert mirror.({:libcluster, path: "../vendor/libcluster", override: true}, "/w/app") ==
               {:libcluster, path: "/w/vendor/libcluster", optional: true}

      assert mirror.({:telemetry, "~> 1.0", only: :prod, runtime: false}, "/app") ==
               {:telemetry, "~> 1.0", optional: true}

      assert mirror.({:libcluster, github: "bitwalker/libcluster", tag: "v3.5.0"}, "/app") ==
               {:libcluster, github: "bitwalker/libcluster", tag: "v3.5.0", optional: true}

      assert mirror.({:libcluster, in_umbrella: true}, "/u/apps/web") ==
               {:libcluster, path: "/u/apps/libcluster", optional: true}
    end
  end

  test "the package's files exist and hold no build output or tests" do
    files = Package.files(@root, LibclusterDroplet.MixProject.package_files())
    assert "mix.exs" in files
    assert "LICENSE" in files
    assert "CHANGELOG.md" in files
    assert "native/droplet_nif/src/lib.rs" in files
    refute Enum.any?(files, &String.starts_with?(&1, ["target/", "_build/", "test/", "deps/"]))
    refute Enum.any?(files, &String.contains?(&1, "testdata"))
  end
end
