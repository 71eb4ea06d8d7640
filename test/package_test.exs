defmodule LibclusterDroplet.PackageTest do
  @moduledoc false
  # The Hex package as a user gets it: exactly the files of mix.exs's
  # `package[:files]`, copied to a temporary directory, where
  # scripts/precompile.exs makes the precompiled NIF of this
  # machine and records it in the copy's checksum file
  # (LibclusterDroplet.Package.precompiled!/1). Throwaway consumer projects
  # depend on that copy; RustlerPrecompiled installs the NIF, served by a
  # loopback HTTP server, found in a prefilled cache, tampered with, or
  # missing, and a forced source build meets a machine without cargo.
  use ExUnit.Case, async: true

  alias LibclusterDroplet.{ConsumerApp, FakeAPI, Package, TestCluster}
  alias LibclusterDroplet.Package.FileServer

  @moduletag :package
  @moduletag timeout: 900_000

  @root Path.expand("..", __DIR__)
  @vendor ConsumerApp.vendor_dir(@root)
  @version Mix.Project.config()[:version]
  @checksum_file "checksum-Elixir.LibclusterDroplet.Native.exs"
  @token "dop_v1_package_test_token"

  unless File.dir?(@vendor) do
    @skip_reason "#{@vendor} is absent: the vendored Hex packages are needed to build " <>
                   "the consumer projects"
    IO.puts(:stderr, "#{inspect(__MODULE__)} skipped: #{@skip_reason}")
    @moduletag skip: @skip_reason
  end

  setup_all do
    if File.dir?(@vendor), do: Package.precompiled!(@root), else: :ok
  end

  # A fresh directory for one consumer, inside the package's temporary one.
  defp new_dir(ctx, label),
    do: Path.join(ctx.tmp, "#{label}_#{System.unique_integer([:positive])}")

  defp start_server!(files) do
    server = start_supervised!({FileServer, []}, id: make_ref())
    for {path, body} <- files, do: FileServer.put(server, path, body)
    server
  end

  # A consumer's environment: the vendor switch, a cache of its own, then `extra`.
  defp env(ctx, extra) do
    [
      {"LIBCLUSTER_DROPLET_VENDOR", ctx.vendor},
      {"RUSTLER_PRECOMPILED_GLOBAL_CACHE_PATH", new_dir(ctx, "cache")}
    ]
    |> Enum.reject(fn {key, _} -> List.keymember?(extra, key, 0) end)
    |> Kernel.++(extra)
  end

  defp consumer!(ctx, label, opts \\ []),
    do: Package.write_consumer!(new_dir(ctx, label), ctx.package, ctx.files, ctx.vendor, opts)

  defp run_check(dir, env), do: Package.mix(dir, ["run", "-e", "IO.puts(Consumer.check())"], env)

  defp tamper(data) do
    <<head::binary-size(100), byte, rest::binary>> = data
    <<head::binary, Bitwise.bxor(byte, 1), rest::binary>>
  end

  describe "the package's files" do
    test "hold the sources, Cargo.lock and the checksum file, and no build output or tests",
         ctx do
      assert "Cargo.lock" in ctx.files
      assert @checksum_file in ctx.files
      assert "native/droplet_nif/src/lib.rs" in ctx.files
      assert "lib/libcluster_droplet/native.ex" in ctx.files

      refute Enum.any?(
               ctx.files,
               &String.starts_with?(&1, ["target/", "_build/", "test/", "deps/"])
             )

      refute Enum.any?(ctx.files, &String.contains?(&1, "testdata"))
      # Building it wrote nothing into the copy but _build/, Rustler's
      # priv/native and the checksum file's new line (no target/: cargo
      # builds where it is told).
      assert Enum.reject(
               Package.tree(ctx.package),
               &String.starts_with?(&1, ["_build/", "priv/"])
             ) ==
               ctx.files
    end

    test "build the NIF from source: the copy compiled it with cargo as a root project", ctx do
      assert ctx.precompile_output =~ "Compiling crate droplet_nif in release mode"
      refute File.exists?(Path.join(ctx.package, "target"))
    end
  end

  describe "scripts/precompile.exs" do
    test "packs the library under RustlerPrecompiled's artifact name and records its sum",
         ctx do
      assert ctx.name =~
               ~r/^libdroplet_nif-v#{Regex.escape(@version)}-nif-2\.16-(x86_64|aarch64)-(unknown-linux-gnu|unknown-linux-musl|apple-darwin)\.so\.tar\.gz$/

      data = File.read!(ctx.artifact)
      {checksums, _} = Code.eval_file(Path.join(ctx.package, @checksum_file))
      assert checksums == %{ctx.name => Package.sha256(data)}
      assert ctx.precompile_output =~ Package.sha256(data)

      # One member, the library, named like the artifact without .tar.gz;
      # the release profile (fat LTO, stripped) keeps it under 3 MB.
      assert {:ok, [{member, <<0x7F, "ELF", _::binary>> = library}]} =
               :erl_tar.extract({:binary, data}, [:compressed, :memory])

      assert byte_size(library) < 3_000_000

      assert List.to_string(member) == String.replace_suffix(ctx.name, ".tar.gz", "")

      # Formatted as `mix format` writes it.
      text = File.read!(Path.join(ctx.package, @checksum_file))
      assert IO.iodata_to_binary([Code.format_string!(text), "\n"]) == text
    end
  end

  describe "the precompiled NIF" do
    test "LIBCLUSTER_DROPLET_BASE_URL: a consumer on a PATH without cargo downloads it, " <>
           "checks it, caches it and loads it; libcluster compiles first; no warning",
         ctx do
      data = File.read!(ctx.artifact)
      server = start_server!(%{"/mirror/#{ctx.name}" => data})
      cache = new_dir(ctx, "cache")
      dir = consumer!(ctx, "base_url")

      env =
        env(ctx, [
          {"PATH", Package.path_without_cargo()},
          # No trailing slash: the artifact's name is joined to the path all the same.
          {"LIBCLUSTER_DROPLET_BASE_URL", FileServer.url(server) <> "/mirror"},
          {"RUSTLER_PRECOMPILED_GLOBAL_CACHE_PATH", cache}
        ])

      assert {out, 0} = Package.mix(dir, ["compile"], env)
      refute out =~ "Compiling crate"
      refute out =~ ~r/warning/i, out
      assert FileServer.requests(server) == ["GET /mirror/#{ctx.name} HTTP/1.1"]
      assert File.read!(Path.join(cache, ctx.name)) == data
      assert Package.installed_nifs(dir) == [String.replace_suffix(ctx.name, ".tar.gz", "")]

      # The consumer lists libcluster_droplet before libcluster: the
      # optional dependency is compiled first, so the behaviour is declared.
      order = for [app] <- Regex.scan(~r/^==> (\w+)$/m, out, capture: :all_but_first), do: app

      assert Enum.find_index(order, &(&1 == "libcluster")) <
               Enum.find_index(order, &(&1 == "libcluster_droplet")),
             "compile order: #{inspect(order)}"

      code =
        "IO.puts(Consumer.check()); IO.puts(Consumer.debug_nifs?()); " <>
          "Cluster.Strategy.Droplet.module_info(:attributes) " <>
          "|> Keyword.get_values(:behaviour) |> List.flatten() |> IO.inspect()"

      assert {out, 0} = Package.mix(dir, ["run", "-e", code], env)
      assert out =~ "nif #{@version} probe ok\nfalse\n"
      assert out =~ "Cluster.Strategy]"
      assert length(FileServer.requests(server)) == 1
    end

    test "config :libcluster_droplet, :precompiled_base_url is the base URL without the env var",
         ctx do
      server = start_server!(%{"/from-config/#{ctx.name}" => File.read!(ctx.artifact)})

      dir =
        consumer!(ctx, "config_url",
          config:
            "config :libcluster_droplet, :precompiled_base_url, " <>
              inspect(FileServer.url(server) <> "/from-config/") <> "\n"
        )

      env = env(ctx, [{"PATH", Package.path_without_cargo()}])
      assert {_, 0} = Package.mix(dir, ["compile"], env)
      assert FileServer.requests(server) == ["GET /from-config/#{ctx.name} HTTP/1.1"]
      assert {out, 0} = run_check(dir, env)
      assert out =~ "nif #{@version} probe ok"
    end

    test "offline: a cache prefilled at RUSTLER_PRECOMPILED_GLOBAL_CACHE_PATH needs no server " <>
           "and no cargo",
         ctx do
      cache = new_dir(ctx, "prefilled")
      File.mkdir_p!(cache)
      File.cp!(ctx.artifact, Path.join(cache, ctx.name))
      server = start_server!(%{})
      dir = consumer!(ctx, "offline")

      env =
        env(ctx, [
          {"PATH", Package.path_without_cargo()},
          {"LIBCLUSTER_DROPLET_BASE_URL", FileServer.url(server)},
          {"RUSTLER_PRECOMPILED_GLOBAL_CACHE_PATH", cache}
        ])

      assert {_, 0} = Package.mix(dir, ["compile"], env)
      assert {out, 0} = run_check(dir, env)
      assert out =~ "nif #{@version} probe ok"
      assert FileServer.requests(server) == []
    end

    test "a tampered artifact stops the build, naming both sums; it is neither installed " <>
           "nor kept in the cache",
         ctx do
      expected = Package.sha256(File.read!(ctx.artifact))
      tampered = tamper(File.read!(ctx.artifact))
      actual = Package.sha256(tampered)
      server = start_server!(%{"/#{ctx.name}" => tampered})
      cache = new_dir(ctx, "cache")
      dir = consumer!(ctx, "tampered")

      env =
        env(ctx, [
          {"PATH", Package.path_without_cargo()},
          {"LIBCLUSTER_DROPLET_BASE_URL", FileServer.url(server)},
          {"RUSTLER_PRECOMPILED_GLOBAL_CACHE_PATH", cache}
        ])

      {out, status} = Package.mix(dir, ["compile"], env)
      assert status != 0
      assert out =~ "the precompiled NIF #{ctx.name} does not match #{@checksum_file}"
      assert out =~ "the checksum file says #{expected}, the file has #{actual}"
      assert FileServer.requests(server) == ["GET /#{ctx.name} HTTP/1.1"]
      refute File.exists?(Path.join(cache, ctx.name))
      assert Package.installed_nifs(dir) == []

      # Tampered in a prefilled cache: refused the same way, even with cargo
      # at hand and rustler among the deps: a mismatch never falls back.
      File.write!(Path.join(cache, ctx.name), tampered)
      dir = consumer!(ctx, "tampered_cache", rustler: true)
      env = List.keydelete(env, "PATH", 0)

      {out, status} = Package.mix(dir, ["compile"], env)
      assert status != 0
      assert out =~ "the checksum file says #{expected}, the file has #{actual}"
      refute out =~ "Compiling crate"
      refute File.exists?(Path.join(cache, ctx.name))
      assert Package.installed_nifs(dir) == []
    end

    test "a failed download names the URL, the base-URL settings, the offline cache, the " <>
           "proxies and the source build",
         ctx do
      server = start_server!(%{})
      dir = consumer!(ctx, "not_served")

      env =
        env(ctx, [
          {"PATH", Package.path_without_cargo()},
          {"LIBCLUSTER_DROPLET_BASE_URL", FileServer.url(server)}
        ])

      {out, status} = Package.mix(dir, ["compile"], env)
      assert status != 0
      assert out =~ "couldn't fetch NIF from #{FileServer.url(server)}/#{ctx.name}"

      for knob <-
            ~w(LIBCLUSTER_DROPLET_BASE_URL :precompiled_base_url RUSTLER_PRECOMPILED_GLOBAL_CACHE_PATH
               HTTPS_PROXY LIBCLUSTER_DROPLET_BUILD=1 https://rustup.rs),
          do: assert(out =~ knob, knob)

      assert Package.installed_nifs(dir) == []
    end
  end

  describe "LIBCLUSTER_DROPLET_BUILD=1" do
    test "without cargo, the build stops, names the variable and says that unsetting it " <>
           "installs this target's precompiled NIF",
         ctx do
      server = start_server!(%{"/#{ctx.name}" => File.read!(ctx.artifact)})
      dir = consumer!(ctx, "forced_no_cargo", rustler: true)

      env =
        env(ctx, [
          {"PATH", Package.path_without_cargo()},
          {"LIBCLUSTER_DROPLET_BASE_URL", FileServer.url(server)},
          {"LIBCLUSTER_DROPLET_BUILD", "1"}
        ])

      {out, status} = Package.mix(dir, ["compile"], env)
      assert status != 0
      assert out =~ "cargo is not on the PATH"

      assert out =~
               "Unset LIBCLUSTER_DROPLET_BUILD to install the precompiled NIF of this target " <>
                 "instead (#{ctx.name})"

      refute out =~ ":enoent"
      assert FileServer.requests(server) == []

      # Unset, the same consumer installs it.
      env = List.keydelete(env, "LIBCLUSTER_DROPLET_BUILD", 0)
      assert {_, 0} = Package.mix(dir, ["compile"], env)
      assert FileServer.requests(server) == ["GET /#{ctx.name} HTTP/1.1"]
    end

    test "for a target without a precompiled NIF, the same stop says building from source is " <>
           "the only way; without rustler among the deps it says to add it",
         ctx do
      dir = consumer!(ctx, "forced_riscv", rustler: true)

      # RustlerPrecompiled's variables for another target (as Nerves sets them).
      env =
        env(ctx, [
          {"PATH", Package.path_without_cargo()},
          {"LIBCLUSTER_DROPLET_BUILD", "1"},
          {"TARGET_ARCH", "riscv64"},
          {"TARGET_OS", "linux"},
          {"TARGET_ABI", "gnu"}
        ])

      {out, status} = Package.mix(dir, ["compile"], env)
      assert status != 0
      assert out =~ "LIBCLUSTER_DROPLET_BUILD=1"
      assert out =~ "No precompiled NIF of libcluster_droplet #{@version} exists for this target"
      refute out =~ "Unset LIBCLUSTER_DROPLET_BUILD"

      dir = consumer!(ctx, "forced_no_rustler")
      env = Enum.reject(env, fn {key, _} -> String.starts_with?(key, "TARGET_") end)
      {out, status} = Package.mix(dir, ["compile"], env)
      assert status != 0
      assert out =~ "the :rustler package is not among the dependencies"
      assert out =~ ~s({:rustler, ">= 0.36.0", runtime: false})
    end

    test "with cargo, it builds from source although an artifact is served; " <>
           "CARGO_TARGET_DIR is honoured",
         ctx do
      server = start_server!(%{"/#{ctx.name}" => File.read!(ctx.artifact)})
      dir = consumer!(ctx, "forced", rustler: true)

      env =
        env(ctx, [
          {"LIBCLUSTER_DROPLET_BASE_URL", FileServer.url(server)},
          {"LIBCLUSTER_DROPLET_BUILD", "1"},
          {"CARGO_TARGET_DIR", ConsumerApp.shared_target_dir(@root)}
        ])

      assert {out, 0} = Package.mix(dir, ["compile"], env)
      assert out =~ "Compiling crate droplet_nif in release mode"
      assert Package.installed_nifs(dir) == ["libdroplet_nif.so"]
      refute File.exists?(Path.join(dir, "_build/prod/lib/libcluster_droplet/native"))
      code = "IO.puts(Consumer.check()); IO.puts(Consumer.debug_nifs?())"
      assert {out, 0} = Package.mix(dir, ["run", "-e", code], env)
      # The test-only NIFs are this repository's own, never a dependency's.
      assert out =~ "nif #{@version} probe ok\nfalse\n"
      assert FileServer.requests(server) == []
    end
  end

  test "a consumer app on a PATH without cargo installs the NIF from the artifact server, " <>
         "and its nodes cluster",
       ctx do
    server = start_server!(%{"/#{ctx.name}" => File.read!(ctx.artifact)})

    app =
      ConsumerApp.build!(
        root: ctx.package,
        vendor: ctx.vendor,
        env: [
          {"PATH", Package.path_without_cargo()},
          {"LIBCLUSTER_DROPLET_BASE_URL", FileServer.url(server)}
        ]
      )

    on_exit(fn -> ConsumerApp.cleanup(app) end)
    refute app.compile_output =~ "Compiling crate"
    assert FileServer.requests(server) == ["GET /#{ctx.name} HTTP/1.1"]

    api = start_supervised!({FakeAPI, token: @token})

    nodes =
      for address <- free_addresses(2, app.health_check_port || 4000) do
        id = System.unique_integer([:positive])
        :ok = FakeAPI.add_droplet(api, ConsumerApp.droplet(app, id, address))
        node = ConsumerApp.start_node(app, address, @token, FakeAPI.url(api))
        on_exit(fn -> TestCluster.stop(node) end)
        node
      end

    TestCluster.await(fn -> TestCluster.full_mesh?(nodes) end, 60_000)

    for node <- nodes do
      assert TestCluster.call(node, LibclusterDroplet.Native, :nif_version, []) == @version
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
end
