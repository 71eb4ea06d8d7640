defmodule LibclusterDroplet.PackageTest do
  @moduledoc false
  # The Hex package as a user gets it: exactly the files of mix.exs's
  # `package[:files]`, copied to a temporary directory, as the dependency of
  # throwaway consumer projects; and the precompiled NIF made from that copy
  # by `mix libcluster_droplet.precompile`, served by a loopback HTTP
  # server, found offline, tampered with, or missing.
  #
  # One cargo build serves the whole module: the first consumer builds the
  # NIF from the copy in its own _build (where cargo builds by default), and
  # every later build (the precompile task, the forced source builds) points
  # CARGO_TARGET_DIR there, so cargo finds it fresh.
  use ExUnit.Case, async: true

  alias LibclusterDroplet.{ConsumerApp, FakeAPI, Package, TestCluster}
  alias LibclusterDroplet.Package.FileServer

  @moduletag :package
  @moduletag timeout: 900_000

  @root Path.expand("..", __DIR__)
  @vendor ConsumerApp.vendor_dir(@root)
  @version Mix.Project.config()[:version]
  @token "dop_v1_package_test_token"

  unless File.dir?(@vendor) do
    @skip_reason "#{@vendor} is absent: the vendored libcluster 3.5.0, jason and telemetry " <>
                   "are needed to build the consumer projects"
    IO.puts(:stderr, "#{inspect(__MODULE__)} skipped: #{@skip_reason}")
    @moduletag skip: @skip_reason
  end

  setup_all do
    if File.dir?(@vendor), do: build_package(), else: :ok
  end

  defp build_package do
    tmp =
      Path.join(
        System.tmp_dir!(),
        "libcluster_droplet_package_#{System.pid()}_#{System.unique_integer([:positive])}"
      )

    on_exit(fn -> File.rm_rf!(tmp) end)

    files = Package.files(@root, LibclusterDroplet.MixProject.package_files())
    package = Package.copy!(@root, files, Path.join(tmp, "libcluster_droplet"))
    vendor = Path.join(tmp, "vendor")

    File.mkdir_p!(vendor)

    for app <- ~w(libcluster jason telemetry) do
      File.cp_r!(Path.join(@vendor, app), Path.join(vendor, app))
    end

    {_, 0} = System.cmd("chmod", ["-R", "u+w", vendor])

    # The first consumer: the package listed before libcluster, built from
    # source with cargo's default build directory.
    first = Package.write_consumer!(Path.join(tmp, "first"), package, deps: {:vendored, vendor})
    first_env = [{"LIBCLUSTER_DROPLET_BUILD", "1"}]
    {compile_out, status} = Package.mix(first, ["compile"], first_env)
    if status != 0, do: raise("the first consumer did not compile (#{status}):\n#{compile_out}")

    target_dir = Path.join(first, "_build/prod/native/libcluster_droplet")

    # The precompiled artifact, made from the package copy by its own task.
    artifacts = Path.join(tmp, "artifacts")

    {precompile_out, status} =
      Package.mix(
        package,
        ["libcluster_droplet.precompile", "--output", artifacts],
        [{"CARGO_TARGET_DIR", target_dir}]
      )

    if status != 0, do: raise("precompile failed (#{status}):\n#{precompile_out}")

    {:ok, host} = LibclusterDroplet.NifBuild.target()
    name = LibclusterDroplet.NifBuild.artifact_name(@version, host)
    artifact = Path.join(artifacts, name)

    %{
      tmp: tmp,
      files: files,
      package: package,
      vendor: vendor,
      first: first,
      first_env: first_env,
      compile_out: compile_out,
      target_dir: target_dir,
      precompile_out: precompile_out,
      host: host,
      name: name,
      artifact: artifact,
      artifacts: artifacts
    }
  end

  # A fresh directory for one consumer, inside the module's temporary one.
  defp new_dir(ctx, label),
    do: Path.join(ctx.tmp, "#{label}_#{System.unique_integer([:positive])}")

  defp start_server!(files) do
    server = start_supervised!({FileServer, []}, id: make_ref())
    for {path, body} <- files, do: FileServer.put(server, path, body)
    server
  end

  # A base URL where nothing listens: any download attempt fails at once.
  defp dead_url do
    {:ok, listen} = :gen_tcp.listen(0, ip: {127, 0, 0, 1})
    {:ok, port} = :inet.port(listen)
    :gen_tcp.close(listen)
    "http://127.0.0.1:#{port}"
  end

  defp run_check(dir, env) do
    Package.mix(dir, ["run", "-e", "IO.puts(Consumer.check())"], env)
  end

  describe "the package's files" do
    test "are enough to build: a consumer of a copy of exactly them compiles the NIF and calls it",
         ctx do
      # The copy holds what mix.exs lists, and the build added nothing to it
      # (no target/, no _build/).
      assert "Cargo.lock" in ctx.files
      assert "checksum-Elixir.LibclusterDroplet.Native.exs" in ctx.files
      assert "mix/droplet_nif.exs" in ctx.files
      refute Enum.any?(ctx.files, &String.starts_with?(&1, ["target/", "_build/", "test/"]))

      assert Package.tree(ctx.package) -- ["checksum-Elixir.LibclusterDroplet.Native.exs"] ==
               ctx.files -- ["checksum-Elixir.LibclusterDroplet.Native.exs"]

      assert ctx.compile_out =~ "Compiling NIF droplet_nif with cargo (release)"
      assert File.regular?(Package.installed_nif(ctx.first))

      assert {out, 0} = run_check(ctx.first, ctx.first_env)
      assert out =~ "nif #{@version} probe ok"
    end

    test "cargo builds in the consumer's _build, not in the dependency's directory", ctx do
      refute File.exists?(Path.join(ctx.package, "target"))
      assert File.regular?(Path.join(ctx.target_dir, "release/libdroplet_nif.so"))
    end

    test "libcluster is compiled first whatever the order of the consumer's deps, " <>
           "and the build warns about nothing",
         ctx do
      # The consumer lists libcluster_droplet before libcluster.
      mix_exs = File.read!(Path.join(ctx.first, "mix.exs"))

      assert :binary.match(mix_exs, ":libcluster_droplet") <
               :binary.match(mix_exs, "{:libcluster,")

      order =
        for [app] <- Regex.scan(~r/^==> (\w+)$/m, ctx.compile_out, capture: :all_but_first),
            do: app

      assert Enum.find_index(order, &(&1 == "libcluster")) <
               Enum.find_index(order, &(&1 == "libcluster_droplet")),
             "compile order: #{inspect(order)}"

      refute ctx.compile_out =~ ~r/warning/i, ctx.compile_out

      code =
        "Cluster.Strategy.Droplet.module_info(:attributes) " <>
          "|> Keyword.get_values(:behaviour) |> List.flatten() |> IO.inspect()"

      assert {out, 0} = Package.mix(ctx.first, ["run", "-e", code], ctx.first_env)
      assert out =~ "Cluster.Strategy]"
    end

    test "Cargo.lock is honoured: with a stale lock the build stops", ctx do
      stale = Package.copy!(@root, ctx.files, new_dir(ctx, "stale_package"))
      toml = Path.join(stale, "native/droplet_nif/Cargo.toml")

      File.write!(
        toml,
        String.replace(
          File.read!(toml),
          ~s(version = "#{@version}"),
          ~s(version = "#{@version}-stale")
        )
      )

      dir = Package.write_consumer!(new_dir(ctx, "stale"), stale)

      {out, status} =
        Package.mix(dir, ["compile"], [
          {"LIBCLUSTER_DROPLET_BUILD", "1"},
          {"CARGO_TARGET_DIR", ctx.target_dir}
        ])

      assert status != 0
      assert out =~ "--locked"
      refute File.exists?(Package.installed_nif(dir))
    end
  end

  describe "precompiled NIF" do
    test "the precompile task packs the library and records its checksum", ctx do
      data = File.read!(ctx.artifact)
      sum = Package.sha256(data)

      checksums =
        LibclusterDroplet.NifBuild.read_checksums(
          Path.join(ctx.package, "checksum-Elixir.LibclusterDroplet.Native.exs")
        )

      assert checksums == %{ctx.name => sum}

      # One member, the library, named like the artifact without .tar.gz.
      assert {:ok, [{member, library}]} =
               :erl_tar.extract({:binary, data}, [:compressed, :memory])

      assert List.to_string(member) == String.replace_suffix(ctx.name, ".tar.gz", "")
      assert library == File.read!(Path.join(ctx.target_dir, "release/libdroplet_nif.so"))
      assert ctx.precompile_out =~ sum
    end

    test "a consumer app on a PATH without cargo downloads it, checks it, caches it, " <>
           "loads it, and its nodes cluster",
         ctx do
      data = File.read!(ctx.artifact)
      server = start_server!(%{"/#{ctx.name}" => data})
      cache = new_dir(ctx, "cache")

      app =
        ConsumerApp.build!(
          root: ctx.package,
          vendor: ctx.vendor,
          env: [
            {"PATH", Package.path_without_cargo()},
            {"LIBCLUSTER_DROPLET_BASE_URL", FileServer.url(server)},
            {"LIBCLUSTER_DROPLET_CACHE_DIR", cache}
          ]
        )

      on_exit(fn -> ConsumerApp.cleanup(app) end)

      assert app.compile_output =~ "Installed the precompiled NIF #{ctx.name}"
      refute app.compile_output =~ "Compiling NIF"
      assert FileServer.requests(server) == ["GET /#{ctx.name} HTTP/1.1"]
      assert File.read!(Path.join(cache, ctx.name)) == data

      # Two nodes of it find each other through the fake API and connect.
      api = start_supervised!({FakeAPI, token: @token})
      addresses = free_addresses(2, app.health_check_port || 4000)

      nodes =
        for address <- addresses do
          :ok =
            FakeAPI.add_droplet(
              api,
              ConsumerApp.droplet(app, System.unique_integer([:positive]), address)
            )

          node = ConsumerApp.start_node(app, address, @token, FakeAPI.url(api))
          on_exit(fn -> TestCluster.stop(node) end)
          node
        end

      TestCluster.await(fn -> TestCluster.full_mesh?(nodes) end, 60_000)

      for node <- nodes do
        assert TestCluster.call(node, LibclusterDroplet.Native, :nif_version, []) == @version
      end
    end

    test "a cached artifact is used without the network", ctx do
      cache = new_dir(ctx, "cache")
      File.mkdir_p!(cache)
      File.cp!(ctx.artifact, Path.join(cache, ctx.name))
      server = start_server!(%{})
      dir = Package.write_consumer!(new_dir(ctx, "cached"), ctx.package)

      env = [
        {"PATH", Package.path_without_cargo()},
        {"LIBCLUSTER_DROPLET_BASE_URL", FileServer.url(server)},
        {"LIBCLUSTER_DROPLET_CACHE_DIR", cache}
      ]

      assert {out, 0} = Package.mix(dir, ["compile"], env)
      assert out =~ "Installed the precompiled NIF #{ctx.name}"
      assert {out, 0} = run_check(dir, env)
      assert out =~ "nif #{@version} probe ok"
      assert FileServer.requests(server) == []
    end

    test "a tampered artifact is refused, naming both sums; nothing is cached or installed",
         ctx do
      data = File.read!(ctx.artifact)
      expected = Package.sha256(data)
      <<head::binary-size(100), byte, rest::binary>> = data
      tampered = <<head::binary, Bitwise.bxor(byte, 1), rest::binary>>
      actual = Package.sha256(tampered)
      server = start_server!(%{"/#{ctx.name}" => tampered})
      cache = new_dir(ctx, "cache")

      # Downloaded.
      dir = Package.write_consumer!(new_dir(ctx, "tampered"), ctx.package)

      env = [
        {"PATH", Package.path_without_cargo()},
        {"LIBCLUSTER_DROPLET_BASE_URL", FileServer.url(server)},
        {"LIBCLUSTER_DROPLET_CACHE_DIR", cache}
      ]

      {out, status} = Package.mix(dir, ["compile"], env)
      assert status != 0
      assert out =~ "checksum mismatch for #{ctx.name}"
      assert out =~ expected
      assert out =~ actual
      assert FileServer.requests(server) == ["GET /#{ctx.name} HTTP/1.1"]
      assert Package.tree(cache) == []
      refute File.exists?(Package.installed_nif(dir))

      # From an offline path, even with cargo at hand: a mismatch never
      # falls back to anything.
      offline = new_dir(ctx, "tampered_offline")
      File.mkdir_p!(offline)
      File.write!(Path.join(offline, ctx.name), tampered)
      dir = Package.write_consumer!(new_dir(ctx, "tampered"), ctx.package)

      {out, status} =
        Package.mix(dir, ["compile"], [
          {"LIBCLUSTER_DROPLET_NIF_PATH", offline},
          {"LIBCLUSTER_DROPLET_CACHE_DIR", cache},
          {"CARGO_TARGET_DIR", ctx.target_dir}
        ])

      assert status != 0
      assert out =~ "checksum mismatch for #{ctx.name}"
      assert out =~ expected and out =~ actual
      refute out =~ "Compiling NIF"
      assert Package.tree(cache) == []
      refute File.exists?(Package.installed_nif(dir))
    end

    test "without an artifact for the target and without cargo, the error lists the targets " <>
           "that have one and says how to build from source",
         ctx do
      server = start_server!(%{})
      dir = Package.write_consumer!(new_dir(ctx, "no_artifact"), ctx.package)

      base_env = [
        {"PATH", Package.path_without_cargo()},
        {"LIBCLUSTER_DROPLET_BASE_URL", FileServer.url(server)},
        {"LIBCLUSTER_DROPLET_CACHE_DIR", new_dir(ctx, "cache")}
      ]

      # A target the checksum file has no artifact for.
      {out, status} =
        Package.mix(dir, ["compile"], [
          {"LIBCLUSTER_DROPLET_TARGET", "riscv64gc-unknown-linux-gnu"} | base_env
        ])

      assert status != 0
      assert out =~ "no precompiled NIF for riscv64gc-unknown-linux-gnu"
      assert_guidance(out, ctx.host)
      assert FileServer.requests(server) == []

      # Listed, but the server does not have it.
      {out, status} = Package.mix(dir, ["compile"], base_env)
      assert status != 0
      assert out =~ "HTTP 404"
      assert_guidance(out, ctx.host)
      assert FileServer.requests(server) == ["GET /#{ctx.name} HTTP/1.1"]
      refute File.exists?(Package.installed_nif(dir))
    end

    test "LIBCLUSTER_DROPLET_BUILD=1, or build_from_source in the config, builds with cargo " <>
           "even though an artifact is served; CARGO_TARGET_DIR is honoured",
         ctx do
      server = start_server!(%{"/#{ctx.name}" => File.read!(ctx.artifact)})

      env = [
        {"LIBCLUSTER_DROPLET_BASE_URL", FileServer.url(server)},
        {"LIBCLUSTER_DROPLET_CACHE_DIR", new_dir(ctx, "cache")},
        {"CARGO_TARGET_DIR", ctx.target_dir}
      ]

      by_env = Package.write_consumer!(new_dir(ctx, "forced_env"), ctx.package)

      by_config =
        Package.write_consumer!(new_dir(ctx, "forced_config"), ctx.package,
          config: "config :libcluster_droplet, build_from_source: true\n"
        )

      for {dir, env} <- [{by_env, [{"LIBCLUSTER_DROPLET_BUILD", "1"} | env]}, {by_config, env}] do
        assert {out, 0} = Package.mix(dir, ["compile"], env)
        assert out =~ "Compiling NIF droplet_nif with cargo (release)"
        refute out =~ "precompiled"
        assert {out, 0} = run_check(dir, env)
        assert out =~ "nif #{@version} probe ok"
        refute File.exists?(Path.join(dir, "_build/prod/native"))
      end

      assert FileServer.requests(server) == []
    end

    test "offline: LIBCLUSTER_DROPLET_NIF_PATH, a directory or the file, needs no server and " <>
           "no cargo",
         ctx do
      for nif_path <- [ctx.artifacts, ctx.artifact] do
        dir = Package.write_consumer!(new_dir(ctx, "offline"), ctx.package)
        cache = new_dir(ctx, "cache")

        env = [
          {"PATH", Package.path_without_cargo()},
          {"LIBCLUSTER_DROPLET_NIF_PATH", nif_path},
          {"LIBCLUSTER_DROPLET_BASE_URL", dead_url()},
          {"LIBCLUSTER_DROPLET_CACHE_DIR", cache}
        ]

        assert {out, 0} = Package.mix(dir, ["compile"], env)
        assert out =~ "Installed the precompiled NIF #{ctx.name}"
        refute out =~ "downloading"
        assert {out, 0} = run_check(dir, env)
        assert out =~ "nif #{@version} probe ok"
      end
    end
  end

  # Addresses whose endpoint port is free now: the loopback range is shared
  # with whatever else runs on the machine.
  defp free_addresses(n, port) do
    Stream.repeatedly(fn -> hd(TestCluster.allocate_addresses(1)) end)
    |> Stream.filter(fn address ->
      {:ok, ip} = :inet.parse_address(String.to_charlist(address))

      case :gen_tcp.listen(port, ip: ip, reuseaddr: true) do
        {:ok, listen} -> :gen_tcp.close(listen) == :ok
        {:error, _} -> false
      end
    end)
    |> Enum.take(n)
  end

  defp assert_guidance(out, host) do
    assert out =~ "Precompiled NIFs of this version exist for these targets: #{host}."
    assert out =~ "install it from https://rustup.rs"
    assert out =~ "LIBCLUSTER_DROPLET_BUILD=1"
    refute out =~ "stacktrace"
    refute out =~ ~r/\(mix [\d.]+\) lib\//
  end
end
