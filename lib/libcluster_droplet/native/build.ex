defmodule LibclusterDroplet.Native.Build do
  @moduledoc false
  # What LibclusterDroplet.Native hands RustlerPrecompiled when it compiles:
  # this package's knobs as its options, a check before a source build, and
  # the errors it raises, completed where they do not say what to do. Only
  # the messages are ours: download, checksum, cache and cargo are its and
  # Rustler's. Everything here runs at compile time, in the project that
  # compiles this package.

  @crate "droplet_nif"
  @checksum_file "checksum-Elixir.LibclusterDroplet.Native.exs"
  # The targets .github/workflows/release.yml builds.
  @targets ~w(
    aarch64-apple-darwin
    x86_64-apple-darwin
    aarch64-unknown-linux-gnu
    x86_64-unknown-linux-gnu
    aarch64-unknown-linux-musl
    x86_64-unknown-linux-musl
  )
  @source_build """
  To build it from source: install Rust (https://rustup.rs) so that cargo is
  on the PATH, list {:rustler, ">= 0.36.0", runtime: false} in your deps, and
  set LIBCLUSTER_DROPLET_BUILD=1.
  """

  @doc """
  RustlerPrecompiled's options for the project config `project` (the
  version, and `:app_path`, which Mix sets for dependencies only) and
  `config :libcluster_droplet, :precompiled_base_url`, under `env`.
  """
  @spec options(keyword(), String.t() | nil, %{String.t() => String.t()}) :: keyword()
  def options(project, configured_url, env \\ System.get_env()) do
    version = Keyword.fetch!(project, :version)
    own_build? = project[:app_path] == nil

    url =
      present(env["LIBCLUSTER_DROPLET_BASE_URL"]) || configured_url ||
        "#{project[:source_url]}/releases/download/v#{version}"

    # Without the key, RustlerPrecompiled's own `config :rustler_precompiled,
    # :force_build` still applies. A checkout's checksum file lists no
    # artifact: this repository always builds from source.
    force_build? = own_build? or env["LIBCLUSTER_DROPLET_BUILD"] in ["1", "true"]
    # Rustler builds in _build unless told; cargo's own variable is honoured.
    target_dir = present(env["CARGO_TARGET_DIR"])

    [
      otp_app: :libcluster_droplet,
      crate: @crate,
      version: version,
      # RustlerPrecompiled joins the artifact's name to the URL's path.
      base_url: String.trim_trailing(url, "/") <> "/",
      targets: @targets,
      # rustler's nif_version_2_16 feature (native/droplet_nif/Cargo.toml).
      nif_versions: ["2.16"],
      # The NIFs only this repository's tests call (native.ex), in all of its
      # own builds: Rustler installs every environment's library at the
      # same place, priv/native, so they must not differ. Never in a
      # dependency's build, nor in an artifact (make precompile).
      features: if(own_build?, do: ["test-panic"], else: [])
    ] ++
      if(force_build?, do: [force_build: true], else: []) ++
      if(target_dir, do: [target_dir: target_dir], else: [])
  end

  defp present(value) when value in [nil, ""], do: nil
  defp present(value), do: value

  @doc """
  Before a forced source build: raises, saying what to do, when Rustler or
  cargo is missing (Rustler would only fail on `cargo metadata`'s :enoent).
  """
  @spec check_source_build!(keyword()) :: :ok
  def check_source_build!(opts) do
    missing =
      [
        !Code.ensure_loaded?(Rustler) && "the :rustler package is not among the dependencies",
        !System.find_executable("cargo") && "cargo is not on the PATH"
      ]
      |> Enum.filter(& &1)

    if opts[:force_build] && missing != [] do
      precompiled =
        with {:ok, name, _cached} <- artifact(opts),
             true <- Map.has_key?(checksums(), name) do
          "Unset LIBCLUSTER_DROPLET_BUILD to install the precompiled NIF of this target " <>
            "instead (#{name})."
        else
          _ -> no_artifact(opts)
        end

      raise """
      libcluster_droplet: the NIF is to be built from source (LIBCLUSTER_DROPLET_BUILD=1, \
      or this repository's own build), but #{Enum.join(missing, " and ")}.

      #{precompiled}

      #{@source_build}\
      """
    end

    :ok
  end

  defp no_artifact(opts),
    do:
      "No precompiled NIF of libcluster_droplet #{opts[:version]} exists for this target; " <>
        "building from source is the only way here."

  @doc "Raises RustlerPrecompiled's `error` again, completed with what to do."
  @spec explain!(Exception.t(), keyword()) :: no_return()
  def explain!(error, opts) do
    message = Exception.message(error)

    cond do
      message =~ "integrity check failed" ->
        {:ok, name, cached} = artifact(opts)
        actual = sha256(File.read!(cached))
        # RustlerPrecompiled caches a download before checking it.
        File.rm(cached)

        raise """
        libcluster_droplet: the precompiled NIF #{name} does not match #{@checksum_file}: \
        the checksum file says #{checksums()[name]}, the file has #{actual}. It was not \
        installed, and was removed from the cache (#{Path.dirname(cached)}).
        """

      message =~ "Error while downloading" ->
        raise """
        #{message}
        Where it downloads from: LIBCLUSTER_DROPLET_BASE_URL, or config :libcluster_droplet, \
        :precompiled_base_url (now #{opts[:base_url]}); through HTTPS_PROXY/HTTP_PROXY when set. \
        Offline: put the artifact in the directory RUSTLER_PRECOMPILED_GLOBAL_CACHE_PATH names.

        #{@source_build}\
        """

      message =~ "does not exist in the checksum file" or message =~ "not available" ->
        raise "#{message}\n\n#{no_artifact(opts)}\n\n#{@source_build}"

      true ->
        raise error
    end
  end

  # The artifact's name for this target, and where RustlerPrecompiled caches
  # it. build_metadata/1 and Config.new/1 are internal to RustlerPrecompiled
  # 0.8 (test/package_test.exs proves they still answer).
  defp artifact(opts) do
    config =
      opts
      |> Keyword.merge(module: LibclusterDroplet.Native, force_build: false)
      |> RustlerPrecompiled.Config.new()

    case RustlerPrecompiled.build_metadata(config) do
      {:ok, %{file_name: name, cached_tar_gz: cached}} -> {:ok, name, cached}
      _ -> :error
    end
  end

  # The checksum file beside mix.exs (RustlerPrecompiled reads it from the
  # compiling project's directory, which Mix sets to this package's), read
  # as data.
  defp checksums do
    with {:ok, text} <- File.read(Path.join(File.cwd!(), @checksum_file)),
         {:ok, {:%{}, _, pairs}} <- Code.string_to_quoted(text),
         true <- Enum.all?(pairs, fn {k, v} -> is_binary(k) and is_binary(v) end) do
      Map.new(pairs)
    else
      _ -> %{}
    end
  end

  defp sha256(data), do: "sha256:" <> Base.encode16(:crypto.hash(:sha256, data), case: :lower)
end
