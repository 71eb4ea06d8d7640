defmodule LibclusterDroplet.NativeBuildTest do
  @moduledoc false
  # How the NIF gets built, without building a consumer: the dependencies
  # as published and the vendor switch (mix.exs), the knobs mapped onto
  # RustlerPrecompiled's options (LibclusterDroplet.Native.Build), and the
  # versions agreeing. test/package_test.exs builds consumers with them.
  use ExUnit.Case, async: true

  alias LibclusterDroplet.Native.Build

  @root Path.expand("..", __DIR__)
  @version Mix.Project.config()[:version]
  # As Mix's config of a dependency has it.
  @dependency [version: "2.0.0", source_url: "https://github.com/o/r", app_path: "/b/lib/x"]

  describe "dependencies" do
    test "are declared as the Hex package declares them, and nothing else is in mix.exs" do
      assert LibclusterDroplet.MixProject.hex_deps() == [
               {:rustler_precompiled, "~> 0.8"},
               {:rustler, ">= 0.36.0", optional: true},
               {:nimble_options, "~> 1.1"},
               {:libcluster, "~> 3.3", optional: true},
               {:telemetry, "~> 0.4 or ~> 1.0", optional: true},
               {:ex_doc, "~> 0.36", only: :dev, runtime: false},
               {:jason, "~> 1.4", optional: true}
             ]

      refute File.exists?(Path.join(@root, "mix"))
      refute File.read!(Path.join(@root, "mix.exs")) =~ ~r/droplet_nif\.exs|mirror|System\.argv/
    end

    test "LIBCLUSTER_DROPLET_VENDOR turns each into a path into that folder, keeping its " <>
           "requirement; unset, they are the Hex requirements" do
      code =
        "Mix.start(); Mix.Project.in_project(:libcluster_droplet, \".\", " <>
          "fn _ -> IO.write(:erlang.term_to_binary(Mix.Project.config()[:deps])) end)"

      deps = fn vendor ->
        {out, 0} =
          System.cmd("elixir", ["-e", code],
            cd: @root,
            env: [{"MIX_ENV", "test"}, {"LIBCLUSTER_DROPLET_VENDOR", vendor}]
          )

        :erlang.binary_to_term(out)
      end

      assert deps.(nil) == LibclusterDroplet.MixProject.hex_deps()
      assert deps.("") == LibclusterDroplet.MixProject.hex_deps()

      hex = Enum.map(LibclusterDroplet.MixProject.hex_deps(), &normalize/1)

      for {{app, requirement, opts}, {hex_app, hex_requirement, hex_opts}} <-
            Enum.zip(deps.("/v"), hex) do
        assert {app, requirement} == {hex_app, hex_requirement}
        assert opts == [path: "/v/#{app}", override: true] ++ hex_opts
      end
    end
  end

  defp normalize({app, requirement}), do: {app, requirement, []}
  defp normalize(dep), do: dep

  describe "RustlerPrecompiled's options" do
    test "the artifact names and targets of the checksum file, NIF version 2.16" do
      opts = Build.options(@dependency, nil, %{})
      assert opts[:otp_app] == :libcluster_droplet
      assert opts[:crate] == "droplet_nif"
      assert opts[:version] == "2.0.0"
      assert opts[:nif_versions] == ["2.16"]

      assert Enum.sort(opts[:targets]) ==
               ~w(aarch64-apple-darwin aarch64-unknown-linux-gnu aarch64-unknown-linux-musl
                  x86_64-apple-darwin x86_64-unknown-linux-gnu x86_64-unknown-linux-musl)
    end

    test "the base URL: LIBCLUSTER_DROPLET_BASE_URL, else the config, else the version's " <>
           "GitHub release; always ending in a slash" do
      assert Build.options(@dependency, nil, %{})[:base_url] ==
               "https://github.com/o/r/releases/download/v2.0.0/"

      assert Build.options(@dependency, "https://c.example/n", %{})[:base_url] ==
               "https://c.example/n/"

      env = %{"LIBCLUSTER_DROPLET_BASE_URL" => "http://127.0.0.1:9/m"}

      assert Build.options(@dependency, "https://c.example/n", env)[:base_url] ==
               "http://127.0.0.1:9/m/"

      empty = %{"LIBCLUSTER_DROPLET_BASE_URL" => ""}

      assert Build.options(@dependency, "https://c.example/n", empty)[:base_url] ==
               "https://c.example/n/"
    end

    test "a dependency builds from source only with LIBCLUSTER_DROPLET_BUILD; otherwise the " <>
           "key is left to RustlerPrecompiled's own config" do
      refute Keyword.has_key?(Build.options(@dependency, nil, %{}), :force_build)

      for value <- ["1", "true"] do
        opts = Build.options(@dependency, nil, %{"LIBCLUSTER_DROPLET_BUILD" => value})
        assert opts[:force_build] == true
        # Test-only NIFs never go into someone else's build.
        assert opts[:features] == []
      end

      refute Keyword.has_key?(
               Build.options(@dependency, nil, %{"LIBCLUSTER_DROPLET_BUILD" => "0"}),
               :force_build
             )
    end

    test "this repository always builds from source, with the test-only NIFs" do
      opts = Build.options(Mix.Project.config(), nil, %{})
      assert opts[:force_build] == true
      assert opts[:features] == ["test-panic"]
      # The NIF this suite runs on is that build: a test-only NIF answers.
      assert {_, _} = LibclusterDroplet.Native.debug_budget()
    end

    test "CARGO_TARGET_DIR is Rustler's build directory when set" do
      refute Keyword.has_key?(Build.options(@dependency, nil, %{}), :target_dir)

      assert Build.options(@dependency, nil, %{"CARGO_TARGET_DIR" => "/t"})[:target_dir] == "/t"
    end
  end

  describe "versions" do
    test "the NIF, the Rust crates and the package share one version" do
      assert LibclusterDroplet.Native.nif_version() == @version

      for crate <- ~w(droplet_core droplet_nif) do
        toml = File.read!(Path.join(@root, "native/#{crate}/Cargo.toml"))
        assert toml =~ ~s(\nversion = "#{@version}"\n), crate
      end
    end

    test "the artifacts' NIF version is the one rustler is built with" do
      toml = File.read!(Path.join(@root, "native/droplet_nif/Cargo.toml"))
      [major, minor] = Regex.run(~r/"nif_version_(\d+)_(\d+)"/, toml, capture: :all_but_first)
      assert Build.options(@dependency, nil, %{})[:nif_versions] == ["#{major}.#{minor}"]
    end

    test "the release profile strips symbols, uses fat LTO and keeps unwinding panics" do
      toml = File.read!(Path.join(@root, "Cargo.toml"))

      [profile] =
        Regex.run(~r/\[profile\.release\](.*?)(?=^\[|\z)/ms, toml, capture: :all_but_first)

      assert profile =~ ~r/^strip = true$/m
      assert profile =~ ~r/^lto = "fat"$/m
      assert profile =~ ~r/^panic = "unwind"$/m
    end

    test "the release workflow builds every target of the options, this crate, NIF 2.16, " <>
           "and reads the version mix.exs has" do
      workflow = File.read!(Path.join(@root, ".github/workflows/release.yml"))

      for target <- Build.options(@dependency, nil, %{})[:targets],
          do: assert(workflow =~ "target: #{target},", target)

      assert length(Regex.scan(~r/- \{ target: /, workflow)) == 6
      assert workflow =~ "uses: philss/rustler-precompiled-action@"
      assert workflow =~ "project-name: droplet_nif\n"
      assert workflow =~ ~s(nif-version: "2.16"\n)

      # The workflow's own command for the version, run on mix.exs.
      [_, sed] = Regex.run(~r/\$\(sed -n '([^']+)' mix\.exs/, workflow)
      assert {@version <> "\n", 0} = System.cmd("sed", ["-n", sed, "mix.exs"], cd: @root)
    end

    test "the repository's checksum file maps artifacts of this version to sha256 sums" do
      {checksums, _} =
        Code.eval_file(Path.join(@root, "checksum-Elixir.LibclusterDroplet.Native.exs"))

      assert is_map(checksums)

      for {name, sum} <- checksums do
        assert name =~ ~r/^libdroplet_nif-v#{Regex.escape(@version)}-nif-2\.16-.+\.so\.tar\.gz$/
        assert sum =~ ~r/^sha256:[0-9a-f]{64}$/
      end
    end
  end
end
