# The NIF's compiler (`Mix.Tasks.Compile.DropletNif`), the precompiled-NIF
# lookup and the `libcluster_droplet.precompile` task live in
# mix/droplet_nif.exs: they run before lib/ is compiled, in this repository
# and when this project is a dependency, so they cannot live in lib/.
Code.require_file("mix/droplet_nif.exs", __DIR__)

defmodule LibclusterDroplet.MixProject do
  use Mix.Project

  @version "2.0.0"

  # What a build needs, and nothing else (no target/, no tests): Hex takes
  # directories recursively. test/package_test.exs builds a consumer
  # against a copy of exactly these files.
  @files [
    "lib",
    "mix",
    "native/droplet_core/src",
    "native/droplet_core/Cargo.toml",
    "native/droplet_nif/src",
    "native/droplet_nif/Cargo.toml",
    "Cargo.toml",
    "Cargo.lock",
    "checksum-Elixir.LibclusterDroplet.Native.exs",
    "mix.exs",
    ".formatter.exs",
    "README.md",
    "LICENSE",
    "CHANGELOG.md"
  ]

  # libcluster and telemetry as the published package declares them.
  @hex_optional_deps [
    {:libcluster, "~> 3.3", optional: true},
    {:telemetry, "~> 0.4 or ~> 1.0", optional: true}
  ]

  def project do
    [
      app: :libcluster_droplet,
      version: @version,
      elixir: "~> 1.14",
      start_permanent: Mix.env() == :prod,
      compilers: [:droplet_nif] ++ Mix.compilers(),
      elixirc_paths: elixirc_paths(Mix.env()),
      deps: deps(),
      description: "libcluster strategy for DigitalOcean Droplets, with a Rust NIF core",
      package: package(),
      source_url: source_url(),
      docs: [main: "readme", extras: ["README.md", "CHANGELOG.md"]]
    ]
  end

  def application do
    [
      mod: {LibclusterDroplet.Application, []},
      extra_applications: [:logger] ++ support_applications(Mix.env())
    ]
  end

  defp package do
    [
      licenses: ["MIT"],
      links: %{"GitHub" => source_url(), "Changelog" => source_url() <> "/blob/main/CHANGELOG.md"},
      files: @files
    ]
  end

  defp source_url,
    do: "https://github.com/#{LibclusterDroplet.NifBuild.github_owner()}/libcluster_droplet"

  @doc false
  def package_files, do: @files

  @doc false
  def hex_optional_deps, do: @hex_optional_deps

  # libcluster and telemetry are optional dependencies: the strategy works
  # without them, and when the application has them, libcluster must be
  # compiled first (`@behaviour Cluster.Strategy` is only declared when it
  # is loaded) and Mix must know this app depends on both (or the
  # consumer's build warns that it "does not depend on :libcluster").
  # Declaring them always would make this repository fetch them from Hex,
  # which its own builds and CI cannot reach. So:
  #
  #   * built as someone's dependency: each of them that the project
  #     loading this one declares is declared here with the same source
  #     (a Hex requirement, a path, a git repository) and `optional: true`.
  #     Mix then orders and converges them without fetching anything, with
  #     no `override: true` needed even for path or git dependencies; the
  #     ones that project lacks are left out, as optional ones would be.
  #   * published (`mix hex.build`/`hex.publish`, or
  #     LIBCLUSTER_DROPLET_PUBLISH=1 for `mix deps.get` before publishing):
  #     the Hex requirements of @hex_optional_deps, so the package's
  #     metadata lists both as optional dependencies.
  #   * otherwise (this repository's own compile and tests): none.
  defp deps do
    cond do
      dependency?() -> mirrored_optional_deps() ++ [{:nimble_options, "~> 1.1"}]
      publishing?() -> @hex_optional_deps
      # Interim (lead's branch): the build branch's switch replaces this.
      true ->
        [
          {:nimble_options, path: "../shared/vendor/nimble_options"},
          {:jason, path: "../shared/vendor/jason", only: [:dev, :test]}
        ]
    end
  end

  # While Mix loads this file as a dependency, the project on top of its
  # stack is the one that depends on this one.
  defp dependency?, do: Mix.Project.get() not in [nil, __MODULE__]

  defp publishing? do
    System.get_env("LIBCLUSTER_DROPLET_PUBLISH") in ["1", "true"] or
      match?(["hex." <> _ | _], System.argv())
  end

  defp mirrored_optional_deps do
    parent_deps = Mix.Project.config()[:deps] || []
    parent_dir = Path.dirname(Mix.Project.project_file() || "mix.exs")

    for {app, _, _} <- @hex_optional_deps,
        spec = Enum.find(parent_deps, &(elem(&1, 0) == app)),
        do: mirror(spec, parent_dir)
  end

  @doc false
  # The parent's declaration of a dependency as an optional one of ours:
  # the same requirement and source, paths made absolute (they were
  # relative to the parent), the parent's own choices (override, only,
  # runtime...) dropped.
  def mirror({app, req}, _dir) when is_binary(req), do: {app, req, optional: true}
  def mirror({app, opts}, dir) when is_list(opts), do: {app, mirror_opts(app, opts, dir)}
  def mirror({app, req, opts}, dir), do: {app, req, mirror_opts(app, opts, dir)}

  defp mirror_opts(app, opts, dir) do
    opts =
      cond do
        opts[:path] -> Keyword.put(opts, :path, Path.expand(opts[:path], dir))
        opts[:in_umbrella] -> Keyword.put(opts, :path, Path.expand("../#{app}", dir))
        true -> opts
      end

    Keyword.drop(opts, [:in_umbrella, :override, :only, :targets, :runtime, :optional, :env]) ++
      [optional: true]
  end

  # The fake DigitalOcean API in test/support serves HTTPS with certificates
  # made at run time; the library itself needs none of these.
  defp support_applications(:prod), do: []
  defp support_applications(_), do: [:crypto, :public_key, :ssl, :inets]

  # The fake DigitalOcean API is shared by the tests, `make demo` and `bench/`.
  defp elixirc_paths(:prod), do: ["lib"]
  defp elixirc_paths(_), do: ["lib", "test/support"]
end
