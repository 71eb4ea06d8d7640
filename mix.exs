defmodule LibclusterDroplet.MixProject do
  use Mix.Project

  @version "2.0.0"
  @source_url "https://github.com/libcluster-droplet/libcluster_droplet"

  # What the Hex package holds, and nothing else (no target/, no tests):
  # Hex takes directories recursively. test/package_test.exs builds a
  # consumer against a copy of exactly these files.
  @files [
    "lib",
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

  # The dependencies, as the Hex package declares them.
  @deps [
    {:rustler_precompiled, "~> 0.8"},
    # Only for building the NIF from source (LIBCLUSTER_DROPLET_BUILD=1).
    {:rustler, ">= 0.36.0", optional: true},
    {:nimble_options, "~> 1.1"},
    # The strategy runs without them; with them, it is a Cluster.Strategy
    # and emits libcluster's telemetry events.
    {:libcluster, "~> 3.3", optional: true},
    {:telemetry, "~> 0.4 or ~> 1.0", optional: true},
    {:ex_doc, "~> 0.36", only: :dev, runtime: false},
    # JSON for the tests' fake API. Not `only: :test`: libcluster and
    # rustler need it in every environment, and Mix refuses an :only that
    # disagrees with theirs; optional, so no user's build fetches it for us.
    {:jason, "~> 1.4", optional: true}
  ]

  def project do
    [
      app: :libcluster_droplet,
      version: @version,
      elixir: "~> 1.14",
      start_permanent: Mix.env() == :prod,
      elixirc_paths: elixirc_paths(Mix.env()),
      deps: deps(),
      description: "libcluster strategy for DigitalOcean Droplets, with a Rust NIF core",
      package: package(),
      source_url: @source_url,
      docs: docs()
    ]
  end

  def application do
    [
      mod: {LibclusterDroplet.Application, []},
      extra_applications: [:logger] ++ support_applications(Mix.env())
    ]
  end

  # The one switch of this repository's own builds and CI: with
  # LIBCLUSTER_DROPLET_VENDOR=DIR, each dependency above keeps its
  # requirement (still checked against the version it finds) but comes
  # from `DIR/<app>` instead of Hex, which those machines cannot reach. The
  # Makefile sets it (CONTRIBUTING.md). `override: true` makes the folder
  # win over the same package named by another dependency's mix.exs.
  defp deps do
    case System.get_env("LIBCLUSTER_DROPLET_VENDOR") do
      vendor when vendor in [nil, ""] -> @deps
      vendor -> Enum.map(@deps, &vendored(&1, Path.expand(vendor)))
    end
  end

  defp vendored({app, requirement}, vendor), do: vendored({app, requirement, []}, vendor)

  defp vendored({app, requirement, opts}, vendor),
    do: {app, requirement, [path: Path.join(vendor, "#{app}"), override: true] ++ opts}

  @doc false
  def hex_deps, do: @deps

  @doc false
  def package_files, do: @files

  defp package do
    [
      licenses: ["MIT"],
      links: %{"GitHub" => @source_url, "Changelog" => "#{@source_url}/blob/main/CHANGELOG.md"},
      files: @files
    ]
  end

  @guides [
    "guides/configuration.md",
    "guides/how-it-works.md",
    "guides/troubleshooting.md",
    "guides/deployment.md",
    "guides/reliability.md",
    "guides/benchmarks.md"
  ]

  @doc false
  def guides, do: @guides

  defp docs do
    [
      main: "readme",
      source_ref: "v#{@version}",
      extras: ["README.md"] ++ @guides ++ ["CHANGELOG.md", "CONTRIBUTING.md"],
      groups_for_extras: [Guides: @guides, Project: ["CHANGELOG.md", "CONTRIBUTING.md"]],
      # The docs of these two still name the internal Floor and Plan; this
      # line goes once they do not.
      skip_undefined_reference_warnings_on: ["LibclusterDroplet", "LibclusterDroplet.HealthCheck"],
      # test/support is compiled in :dev too (make demo, bench/), but is no
      # part of the library.
      filter_modules: fn module, _ ->
        not String.contains?("#{module.module_info(:compile)[:source]}", "/test/support/")
      end,
      # Internal modules are `@moduledoc false`: the guides tell how they work.
      groups_for_modules: [
        Strategy: [
          Cluster.Strategy.Droplet,
          Cluster.Strategy.Droplet.Config,
          LibclusterDroplet.Token,
          LibclusterDroplet.HealthCheck,
          LibclusterDroplet.HealthCheck.TCP
        ],
        "DigitalOcean API": [
          LibclusterDroplet,
          LibclusterDroplet.Listing,
          LibclusterDroplet.Call,
          LibclusterDroplet.Error
        ],
        Explain: [
          LibclusterDroplet.Explain,
          LibclusterDroplet.Explain.Report,
          LibclusterDroplet.Explain.Entry,
          LibclusterDroplet.Explain.Facts,
          LibclusterDroplet.Verdict,
          Mix.Tasks.LibclusterDroplet.Explain
        ]
      ]
    ]
  end

  # The fake DigitalOcean API in test/support serves HTTPS with certificates
  # made at run time; the library itself needs none of these.
  defp support_applications(:prod), do: []
  defp support_applications(_), do: [:crypto, :public_key, :ssl, :inets]

  # The fake DigitalOcean API is shared by the tests, `make demo` and `bench/`.
  defp elixirc_paths(:prod), do: ["lib"]
  defp elixirc_paths(_), do: ["lib", "test/support"]
end
