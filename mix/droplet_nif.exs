# The NIF's build: precompiled libraries and cargo.
#
# `mix.exs` requires this file (`Code.require_file/2`), so everything here is
# defined before `lib/` compiles, both in this repository and when the
# project is a dependency: the `:droplet_nif` compiler runs first of all
# compilers, long before any module of `lib/` exists, and the tasks below
# work in a checkout without compiling it. It is part of the Hex package's
# `files`.
#
# The scheme is rustler_precompiled's (that package is on Hex, out of reach
# here): release artifacts named
# `libdroplet_nif-v<version>-nif-<nif version>-<target>.so.tar.gz`, checked
# against the SHA-256 sums of `checksum-Elixir.LibclusterDroplet.Native.exs`,
# which ships in the package.

defmodule LibclusterDroplet.NifBuild do
  @moduledoc false
  # Everything the compiler and the tasks share: targets, artifact names,
  # the checksum file, the cache, downloads and cargo.

  @crate "droplet_nif"
  @root Path.expand("..", __DIR__)

  # rustler's `nif_version_2_16` feature (native/droplet_nif/Cargo.toml):
  # the library loads on OTP 24 and later.
  @nif_version "2.16"

  # The owner of the GitHub repository whose releases hold the precompiled
  # libraries. A placeholder until the project is published: set it to the
  # real owner (or use :precompiled_base_url / LIBCLUSTER_DROPLET_BASE_URL).
  @github_owner "libcluster-droplet"
  @github_repo "libcluster_droplet"

  @checksum_file "checksum-Elixir.LibclusterDroplet.Native.exs"

  # What the release workflow (.github/workflows/release.yml) builds.
  @targets ~w(
    aarch64-apple-darwin
    x86_64-apple-darwin
    aarch64-unknown-linux-gnu
    x86_64-unknown-linux-gnu
    aarch64-unknown-linux-musl
    x86_64-unknown-linux-musl
  )

  @max_redirects 5

  def root, do: @root
  def crate, do: @crate
  def nif_version, do: @nif_version
  def targets, do: @targets
  def github_owner, do: @github_owner
  def checksum_path(root \\ @root), do: Path.join(root, @checksum_file)

  def default_base_url(version),
    do: "https://github.com/#{@github_owner}/#{@github_repo}/releases/download/v#{version}"

  @doc "The artifact's file name for `version` and `target`."
  def artifact_name(version, target),
    do: "lib#{@crate}-v#{version}-nif-#{@nif_version}-#{target}.so.tar.gz"

  # ---------------------------------------------------------------- targets

  @doc """
  The target triple of this machine, or the one LIBCLUSTER_DROPLET_TARGET
  names (to fetch the library of another target, e.g. for a release built
  on glibc to run on musl).
  """
  def target(env \\ System.get_env()) do
    case env["LIBCLUSTER_DROPLET_TARGET"] do
      target when is_binary(target) and target != "" ->
        {:ok, target}

      _ ->
        target_from_arch(List.to_string(:erlang.system_info(:system_architecture)))
    end
  end

  @doc """
  The target triple of a BEAM's `system_architecture` string, such as
  "x86_64-pc-linux-gnu", "aarch64-unknown-linux-musl" or
  "aarch64-apple-darwin23.4.0".
  """
  def target_from_arch(arch) do
    [cpu | rest] = String.split(arch, "-")
    system = Enum.join(rest, "-")

    cpu =
      case cpu do
        "x86_64" -> "x86_64"
        "amd64" -> "x86_64"
        "aarch64" -> "aarch64"
        "arm64" -> "aarch64"
        other -> {:unsupported, other}
      end

    os =
      cond do
        system =~ ~r/darwin/ -> "apple-darwin"
        system =~ ~r/linux/ and system =~ ~r/musl/ -> "unknown-linux-musl"
        system =~ ~r/linux/ -> "unknown-linux-gnu"
        true -> {:unsupported, system}
      end

    case {cpu, os} do
      {cpu, os} when is_binary(cpu) and is_binary(os) -> {:ok, "#{cpu}-#{os}"}
      _ -> {:error, "this machine (#{arch}) is not a target libcluster_droplet precompiles for"}
    end
  end

  # -------------------------------------------------------------- checksums

  @doc "SHA-256 of `data`, as the checksum file writes it."
  def sha256(data), do: "sha256:" <> Base.encode16(:crypto.hash(:sha256, data), case: :lower)

  @doc """
  The checksum file's map of artifact name to "sha256:<hex>". The file is
  read as data (a literal map of strings), never evaluated.
  """
  def read_checksums(path \\ checksum_path()) do
    case File.read(path) do
      {:ok, text} ->
        case Code.string_to_quoted(text) do
          {:ok, {:%{}, _, pairs}} ->
            if Enum.all?(pairs, fn {k, v} -> is_binary(k) and is_binary(v) end),
              do: Map.new(pairs),
              else: Mix.raise("#{path} must be a map of file names to \"sha256:<hex>\" strings")

          _ ->
            Mix.raise("#{path} must be a map of file names to \"sha256:<hex>\" strings")
        end

      {:error, :enoent} ->
        %{}

      {:error, reason} ->
        Mix.raise("cannot read #{path}: #{:file.format_error(reason)}")
    end
  end

  def write_checksums(path, checksums) do
    # As `mix format` would write it: the file is in this project's inputs.
    text = inspect(Map.new(checksums), limit: :infinity, printable_limit: :infinity)
    File.write!(path, IO.iodata_to_binary(Code.format_string!(text)) <> "\n")
  end

  @doc "The targets the checksum file lists an artifact of `version` for."
  def listed_targets(checksums, version) do
    prefix = "lib#{@crate}-v#{version}-nif-#{@nif_version}-"

    for name <- Map.keys(checksums),
        String.starts_with?(name, prefix) and String.ends_with?(name, ".so.tar.gz"),
        do: name |> String.replace_prefix(prefix, "") |> String.replace_suffix(".so.tar.gz", "")
  end

  def verify(name, data, expected) do
    case sha256(data) do
      ^expected ->
        :ok

      actual ->
        {:error,
         "checksum mismatch for #{name}: the checksum file says #{expected}, " <>
           "the file has #{actual}; it was not used"}
    end
  end

  # ------------------------------------------------------------ the library

  @doc "The library in the artifact `tarball` (checked already)."
  def extract_library(tarball, name) do
    member = String.replace_suffix(name, ".tar.gz", "")

    case :erl_tar.extract({:binary, tarball}, [:compressed, :memory]) do
      {:ok, files} ->
        case List.keyfind(files, String.to_charlist(member), 0) do
          {_, library} -> {:ok, library}
          nil -> {:error, "#{name} does not contain #{member}"}
        end

      {:error, reason} ->
        {:error, "#{name} is not a readable tar.gz: #{inspect(reason)}"}
    end
  end

  @doc "Packs the built `library` file as the artifact `name` in `dir`."
  def pack!(library, name, dir) do
    File.mkdir_p!(dir)
    path = Path.join(dir, name)
    member = String.replace_suffix(name, ".tar.gz", "")
    entry = {String.to_charlist(member), File.read!(library)}
    :ok = :erl_tar.create(String.to_charlist(path), [entry], [:compressed])
    path
  end

  # ---------------------------------------------------------- where from

  @doc """
  The directory downloaded artifacts are kept in: LIBCLUSTER_DROPLET_CACHE_DIR,
  else the user cache directory (XDG_CACHE_HOME or ~/.cache on Linux,
  ~/Library/Caches on macOS) + libcluster_droplet.
  """
  def cache_dir(env \\ System.get_env()) do
    case env["LIBCLUSTER_DROPLET_CACHE_DIR"] do
      dir when is_binary(dir) and dir != "" ->
        Path.expand(dir)

      _ ->
        # :filename.basedir reads XDG_CACHE_HOME from the OS environment.
        case env["XDG_CACHE_HOME"] do
          xdg when is_binary(xdg) and xdg != "" ->
            Path.join(Path.expand(xdg), "libcluster_droplet")

          _ ->
            List.to_string(:filename.basedir(:user_cache, ~c"libcluster_droplet"))
        end
    end
  end

  @doc """
  The base URL artifacts are downloaded from: LIBCLUSTER_DROPLET_BASE_URL,
  else `config :libcluster_droplet, :precompiled_base_url`, else this
  version's GitHub release.
  """
  def base_url(version, env \\ System.get_env()) do
    case env["LIBCLUSTER_DROPLET_BASE_URL"] do
      url when is_binary(url) and url != "" ->
        url

      _ ->
        Application.get_env(:libcluster_droplet, :precompiled_base_url) ||
          default_base_url(version)
    end
  end

  @doc """
  The checked artifact `name`, whose sum is `expected`: from
  LIBCLUSTER_DROPLET_NIF_PATH when set (a directory holding it, or the file
  itself; nothing else is tried), else from the cache, else downloaded from
  the base URL and then cached. Returns `{:ok, tarball}`,
  `{:unavailable, why}` (fall back to cargo), or `{:error, why}` (stop:
  a checksum mismatch, an unusable NIF path).
  """
  def fetch(name, expected, version, env \\ System.get_env()) do
    case env["LIBCLUSTER_DROPLET_NIF_PATH"] do
      path when is_binary(path) and path != "" -> fetch_path(Path.expand(path), name, expected)
      _ -> fetch_cached(name, expected, version, env)
    end
  end

  defp fetch_path(path, name, expected) do
    file = if File.dir?(path), do: Path.join(path, name), else: path

    case File.read(file) do
      {:ok, data} ->
        with :ok <- verify(name, data, expected), do: {:ok, data}

      {:error, reason} ->
        {:error,
         "LIBCLUSTER_DROPLET_NIF_PATH is set, but #{file} cannot be read " <>
           "(#{:file.format_error(reason)}); it must be #{name} or a directory holding it"}
    end
  end

  defp fetch_cached(name, expected, version, env) do
    cached = Path.join(cache_dir(env), name)

    with {:ok, data} <- File.read(cached),
         :ok <- verify(name, data, expected) do
      {:ok, data}
    else
      {:error, "checksum mismatch" <> _ = why} ->
        Mix.shell().info("libcluster_droplet: cached file refused (#{why}); downloading it again")
        File.rm(cached)
        download_and_cache(name, expected, version, cached, env)

      {:error, _} ->
        download_and_cache(name, expected, version, cached, env)
    end
  end

  defp download_and_cache(name, expected, version, cached, env) do
    url = String.trim_trailing(base_url(version, env), "/") <> "/" <> name
    Mix.shell().info("libcluster_droplet: downloading #{redact(url)}")

    case http_get(url, env) do
      {:ok, data} ->
        with :ok <- verify(name, data, expected) do
          # Only a checked file is cached; write then rename, so no reader
          # ever sees half of it.
          try do
            File.mkdir_p!(Path.dirname(cached))
            tmp = "#{cached}.#{System.unique_integer([:positive])}.tmp"
            File.write!(tmp, data)
            File.rename!(tmp, cached)
          rescue
            error ->
              Mix.shell().info(
                "libcluster_droplet: could not cache #{name}: #{Exception.message(error)}"
              )
          end

          {:ok, data}
        end

      {:error, why} ->
        {:unavailable, "#{redact(url)} could not be downloaded: #{why}"}
    end
  end

  # --------------------------------------------------------------- HTTP

  @doc "`url` without credentials or query, for messages."
  def redact(url) do
    URI.to_string(%{URI.parse(url) | userinfo: nil, query: nil})
  end

  @doc """
  GETs `url` with OTP's `:httpc`: https with the peer verified against the
  OS's CA certificates and the host name checked; plain http only for
  loopback hosts; HTTPS_PROXY, HTTP_PROXY and NO_PROXY (or their lowercase
  forms) honoured; up to #{@max_redirects} redirects, each checked the same
  way. Returns `{:ok, body}` or `{:error, why}`.
  """
  def http_get(url, env \\ System.get_env()) do
    {:ok, _} = Application.ensure_all_started(:inets)
    {:ok, _} = Application.ensure_all_started(:ssl)
    # A profile of its own, under inets' supervisor: its proxy settings
    # are this call's alone.
    profile = :"libcluster_droplet_nif_#{System.unique_integer([:positive])}"
    {:ok, _} = :inets.start(:httpc, profile: profile)

    try do
      :ok = :httpc.set_options(proxy_options(env), profile)
      get(url, env, profile, @max_redirects)
    after
      :inets.stop(:httpc, profile)
    end
  end

  defp get(url, env, profile, redirects_left) do
    uri = URI.parse(url)

    with :ok <- check_url(uri) do
      request = {String.to_charlist(url), [{~c"user-agent", ~c"libcluster_droplet"}]}

      http_options =
        [timeout: 300_000, connect_timeout: 30_000, autoredirect: false] ++
          proxy_auth(uri, env) ++
          if(uri.scheme == "https", do: [ssl: ssl_options(uri.host)], else: [])

      case :httpc.request(:get, request, http_options, [body_format: :binary], profile) do
        {:ok, {{_, 200, _}, _headers, body}} ->
          {:ok, body}

        {:ok, {{_, status, _}, headers, _}} when status in [301, 302, 303, 307, 308] ->
          case List.keyfind(headers, ~c"location", 0) do
            {_, location} when redirects_left > 0 ->
              # Credentials of the first URL are not sent to another host.
              next =
                %{uri | userinfo: nil}
                |> URI.merge(List.to_string(location))
                |> URI.to_string()

              get(next, env, profile, redirects_left - 1)

            {_, _} ->
              {:error, "too many redirects"}

            nil ->
              {:error, "HTTP #{status} without a location"}
          end

        {:ok, {{_, status, _}, _, _}} ->
          {:error, "HTTP #{status}"}

        {:error, reason} ->
          {:error, describe_error(reason)}
      end
    end
  end

  @doc "Whether `url` may be fetched: https, or http to a loopback host."
  def check_url(%URI{scheme: "https", host: host}) when is_binary(host) and host != "", do: :ok

  def check_url(%URI{scheme: "http", host: host} = uri) do
    if loopback?(host),
      do: :ok,
      else:
        {:error,
         "#{redact(URI.to_string(uri))}: plain http is only allowed to loopback hosts; use https"}
  end

  def check_url(uri),
    do: {:error, "#{redact(URI.to_string(uri))}: not an https URL"}

  def loopback?(host) when is_binary(host) do
    host = host |> String.trim_leading("[") |> String.trim_trailing("]")

    case :inet.parse_address(String.to_charlist(host)) do
      {:ok, {127, _, _, _}} -> true
      {:ok, {0, 0, 0, 0, 0, 0, 0, 1}} -> true
      {:ok, _} -> false
      {:error, _} -> String.downcase(host) == "localhost"
    end
  end

  def loopback?(_), do: false

  @doc "The TLS options of a request to `host`."
  def ssl_options(host) do
    host = host |> String.trim_leading("[") |> String.trim_trailing("]")

    sni =
      case :inet.parse_address(String.to_charlist(host)) do
        {:ok, _ip} -> []
        {:error, _} -> [server_name_indication: String.to_charlist(host)]
      end

    [
      verify: :verify_peer,
      cacerts: :public_key.cacerts_get(),
      depth: 10,
      customize_hostname_check: [match_fun: :public_key.pkix_verify_hostname_match_fun(:https)]
    ] ++ sni
  end

  @doc "httpc's proxy options from HTTP_PROXY, HTTPS_PROXY and NO_PROXY in `env`."
  def proxy_options(env) do
    no_proxy = no_proxy(env)

    for {key, var} <- [proxy: "HTTP_PROXY", https_proxy: "HTTPS_PROXY"],
        {:ok, proxy} <- [proxy_uri(env, var)],
        do: {key, {{String.to_charlist(proxy.host), proxy.port}, no_proxy}}
  end

  defp proxy_uri(env, var) do
    case env[var] || env[String.downcase(var)] do
      value when is_binary(value) and value != "" ->
        value = if value =~ "://", do: value, else: "http://" <> value

        case URI.parse(value) do
          %URI{host: host} = uri when is_binary(host) and host != "" -> {:ok, uri}
          _ -> :error
        end

      _ ->
        :error
    end
  end

  # httpc wants "*.example.com" for a domain and its hosts.
  defp no_proxy(env) do
    (env["NO_PROXY"] || env["no_proxy"] || "")
    |> String.split(",", trim: true)
    |> Enum.map(&String.trim/1)
    |> Enum.reject(&(&1 == ""))
    |> Enum.flat_map(fn
      "*" -> [~c"*"]
      "." <> domain -> [String.to_charlist(domain), String.to_charlist("*." <> domain)]
      host -> [String.to_charlist(host), String.to_charlist("*." <> host)]
    end)
  end

  # Credentials in the proxy URL (http://user:pass@proxy:3128).
  defp proxy_auth(uri, env) do
    var = if uri.scheme == "https", do: "HTTPS_PROXY", else: "HTTP_PROXY"

    with {:ok, %URI{userinfo: info}} when is_binary(info) <- proxy_uri(env, var),
         [user, pass] <- String.split(info, ":", parts: 2) do
      [proxy_auth: {String.to_charlist(URI.decode(user)), String.to_charlist(URI.decode(pass))}]
    else
      _ -> []
    end
  end

  defp describe_error({:failed_connect, details}) do
    reasons =
      for {:inet, _, reason} <- details do
        case reason do
          {:tls_alert, {_, text}} -> "TLS: #{text}"
          {:options, _} = option -> "TLS options: #{inspect(option)}"
          atom when is_atom(atom) -> "#{:inet.format_error(atom)} (#{atom})"
          other -> inspect(other)
        end
      end

    "could not connect: " <> Enum.join(reasons, ", ")
  end

  defp describe_error({:tls_alert, {_, text}}), do: "TLS: #{text}"
  defp describe_error(reason), do: inspect(reason)

  # ---------------------------------------------------------------- cargo

  def cargo(env \\ System.get_env()) do
    case env["CARGO"] do
      cargo when is_binary(cargo) and cargo != "" -> cargo
      _ -> System.find_executable("cargo")
    end
  end

  @doc """
  cargo's build directory: CARGO_TARGET_DIR when set, else inside the
  build path of the project being compiled (the consumer's `_build`), never
  in this project's sources (a dependency's directory may be read-only or
  shared between projects).
  """
  def target_dir(env \\ System.get_env()) do
    case env["CARGO_TARGET_DIR"] do
      dir when is_binary(dir) and dir != "" -> Path.expand(dir)
      _ -> Path.join([Mix.Project.build_path(), "native", "libcluster_droplet"])
    end
  end

  @doc """
  The arguments of `cargo build`: the release profile, exactly the
  dependency versions of Cargo.lock (`--locked`), only the NIF crate.
  """
  def cargo_args(features, target \\ nil) do
    ["build", "--release", "--locked", "--manifest-path", Path.join(@root, "Cargo.toml")] ++
      ["-p", @crate] ++
      Enum.flat_map(features, &["--features", "#{@crate}/#{&1}"]) ++
      if(target, do: ["--target", target], else: [])
  end

  @doc "Builds the NIF with cargo; returns the path of the built library."
  def cargo_build!(features, target \\ nil) do
    cargo = cargo() || Mix.raise(no_cargo_message())
    dir = target_dir()
    Mix.shell().info("Compiling NIF #{@crate} with cargo (release)")

    env = [{"CARGO_TARGET_DIR", dir}]

    case System.cmd(cargo, cargo_args(features, target),
           into: IO.stream(:stdio, :line),
           stderr_to_stdout: true,
           cd: @root,
           env: env
         ) do
      {_, 0} ->
        :ok

      {_, status} ->
        Mix.raise(
          "cargo build of the #{@crate} NIF failed (exit status #{status}); see its output above"
        )
    end

    built =
      Path.join([dir] ++ if(target, do: [target], else: []) ++ ["release", built_name(target)])

    File.exists?(built) || Mix.raise("cargo finished but #{built} does not exist")
    built
  end

  def no_cargo_message do
    """
    cargo was not found on the PATH.

    libcluster_droplet compiles a Rust NIF and needs a Rust toolchain:
    install it from https://rustup.rs (or your OS packages), make sure
    `cargo` is on the PATH (or set CARGO=/path/to/cargo), then run
    `mix compile` again.
    """
  end

  defp built_name(target) do
    os =
      cond do
        target == nil -> :os.type()
        target =~ "darwin" -> {:unix, :darwin}
        target =~ "windows" -> {:win32, :nt}
        true -> {:unix, :linux}
      end

    case os do
      {:unix, :darwin} -> "lib#{@crate}.dylib"
      {:win32, _} -> "#{@crate}.dll"
      _ -> "lib#{@crate}.so"
    end
  end

  @doc "Installs `data` as the library at `path`."
  def install!(path, data) do
    File.mkdir_p!(Path.dirname(path))
    # Write then rename: a VM that has the old library mapped keeps its inode.
    tmp = path <> ".tmp"
    File.write!(tmp, data)
    File.rename!(tmp, path)
  end
end

defmodule Mix.Tasks.Compile.DropletNif do
  @moduledoc """
  Puts the `droplet_nif` NIF at `priv/native/libdroplet_nif.so` inside the
  application's build directory, where `LibclusterDroplet.Native` loads it.

  As a dependency, it first looks for the precompiled library of this
  version and target (`LIBCLUSTER_DROPLET_NIF_PATH`, the cache, then the
  base URL), checks it against the package's checksum file and installs
  it; without one it builds the crate with cargo. In this repository, or
  with `LIBCLUSTER_DROPLET_BUILD=1` (or `config :libcluster_droplet,
  :build_from_source, true`), it always builds with cargo.

  Cargo is only invoked when a Rust source, a `Cargo.toml`, `Cargo.lock` or
  the feature set changed since the library was last installed, so a second
  `mix compile` costs a few `stat` calls; a precompiled library is only
  fetched again when its name or checksum changes. Set `CARGO` to choose
  the cargo binary; otherwise it is looked up on the `PATH`.
  """
  use Mix.Task.Compiler

  alias LibclusterDroplet.NifBuild

  @impl true
  def run(_args) do
    if source_build?() do
      features = features()
      source_build(features, Enum.join(features, ","), nil)
    else
      precompiled()
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
    do: Path.join([Mix.Project.app_path(), "priv", "native", "lib#{NifBuild.crate()}.so"])

  # What the installed library is: the features of a source build, or the
  # precompiled artifact and its checksum, or the artifact a source build
  # stood in for.
  defp stamp_path, do: Path.join(Mix.Project.app_path(), ".#{NifBuild.crate()}.features")

  @doc false
  # This project compiled as itself, not as someone's dependency: Mix sets
  # :app_path in the config of a dependency only.
  def root_project?, do: Mix.Project.config()[:app_path] == nil

  @doc false
  def source_build?(env \\ System.get_env()) do
    root_project?() or env["LIBCLUSTER_DROPLET_BUILD"] in ["1", "true"] or
      Application.get_env(:libcluster_droplet, :build_from_source, false) == true
  end

  # The panic-on-purpose NIF exists only in the test build of this project.
  defp features do
    if Mix.env() == :test and root_project?(),
      do: ["test-panic"],
      else: []
  end

  defp source_build(features, stamp_value, note) do
    so = installed_library()
    stamp = stamp_path()

    if source_stale?(so, stamp, stamp_value) do
      if note, do: Mix.shell().info("libcluster_droplet: #{note}; building the NIF from source")
      built = NifBuild.cargo_build!(features)
      NifBuild.install!(so, File.read!(built))
      File.write!(stamp, stamp_value)
      {:ok, []}
    else
      {:noop, []}
    end
  end

  defp source_stale?(so, stamp, stamp_value) do
    root = NifBuild.root()

    sources =
      Path.wildcard(Path.join(root, "native/*/src/**/*.rs")) ++
        Path.wildcard(Path.join(root, "native/*/Cargo.toml")) ++
        Enum.filter(
          [Path.join(root, "Cargo.toml"), Path.join(root, "Cargo.lock")],
          &File.exists?/1
        )

    File.read(stamp) != {:ok, stamp_value} or Mix.Utils.stale?(sources, [so])
  end

  defp precompiled do
    version = Mix.Project.config()[:version]
    checksums = NifBuild.read_checksums()

    with {:ok, target} <- NifBuild.target(),
         name = NifBuild.artifact_name(version, target),
         {:ok, sum} <- listed(checksums, name, target) do
      so = installed_library()
      stamp = File.read(stamp_path())
      fallback = "source-instead-of:#{name}:#{sum}"

      cond do
        stamp == {:ok, "precompiled:#{name}:#{sum}"} and File.exists?(so) ->
          {:noop, []}

        # Built with cargo earlier because this artifact could not be had:
        # not asked for again until it changes.
        stamp == {:ok, fallback} ->
          source_build([], fallback, nil)

        true ->
          install_precompiled(name, sum, version, checksums)
      end
    else
      {:error, why} -> unavailable(why, checksums, version, nil)
    end
  end

  defp install_precompiled(name, sum, version, checksums) do
    case NifBuild.fetch(name, sum, version) do
      {:ok, tarball} ->
        case NifBuild.extract_library(tarball, name) do
          {:ok, library} ->
            NifBuild.install!(installed_library(), library)
            File.write!(stamp_path(), "precompiled:#{name}:#{sum}")
            Mix.shell().info("Installed the precompiled NIF #{name} (#{sum})")
            {:ok, []}

          {:error, why} ->
            Mix.raise(why)
        end

      {:unavailable, why} ->
        unavailable(why, checksums, version, "source-instead-of:#{name}:#{sum}")

      {:error, why} ->
        Mix.raise(why)
    end
  end

  defp listed(checksums, name, target) do
    case Map.fetch(checksums, name) do
      {:ok, sum} -> {:ok, sum}
      :error -> {:error, "no precompiled NIF for #{target} (#{name} is not in the checksum file)"}
    end
  end

  # No precompiled library: cargo builds it when present, else a clear stop.
  defp unavailable(why, checksums, version, stamp_value) do
    if NifBuild.cargo() do
      source_build([], stamp_value || "", why)
    else
      listed =
        case NifBuild.listed_targets(checksums, version) do
          [] -> "none"
          targets -> Enum.join(Enum.sort(targets), ", ")
        end

      Mix.raise("""
      libcluster_droplet #{version} has no usable precompiled NIF here: #{why}.

      Precompiled NIFs of this version exist for these targets: #{listed}.

      To build it from source instead, a Rust toolchain is needed, and
      cargo was not found on the PATH: install it from https://rustup.rs
      (or your OS packages), make sure `cargo` is on the PATH (or set
      CARGO=/path/to/cargo), then run `mix compile` again.
      LIBCLUSTER_DROPLET_BUILD=1 makes it always build from source with cargo.
      """)
    end
  end
end

defmodule Mix.Tasks.LibclusterDroplet.Precompile do
  @shortdoc "Builds the precompiled NIF artifact of this machine's target"
  @moduledoc """
  Builds the NIF with cargo (release profile, no test features), packs it as
  `libdroplet_nif-v<version>-nif-2.16-<target>.so.tar.gz` and records its
  SHA-256 in `checksum-Elixir.LibclusterDroplet.Native.exs`.

      mix libcluster_droplet.precompile [--target TRIPLE] [--output DIR] [--checksum-file FILE]

    * `--target` - cross-compile for this target triple (`cargo build
      --target`, so its standard library must be installed); default: this
      machine's target, built without `--target`
    * `--output` - where the artifact is written (default `_build/precompiled`)
    * `--checksum-file` - the checksum file to update (default the one at the
      project's root); entries of other versions are dropped

  Run it in this repository, not in an application depending on it.
  """
  use Mix.Task

  alias LibclusterDroplet.NifBuild

  @switches [target: :string, output: :string, checksum_file: :string]

  @impl true
  def run(args) do
    {opts, _, _} = OptionParser.parse(args, strict: @switches)

    unless Mix.Project.config()[:app] == :libcluster_droplet do
      Mix.raise("mix libcluster_droplet.precompile runs in the libcluster_droplet repository")
    end

    version = Mix.Project.config()[:version]

    target =
      case opts[:target] do
        nil ->
          case NifBuild.target() do
            {:ok, target} -> target
            {:error, why} -> Mix.raise(why)
          end

        target ->
          target
      end

    built = NifBuild.cargo_build!([], opts[:target])
    name = NifBuild.artifact_name(version, target)
    output = Path.expand(opts[:output] || Path.join(Mix.Project.build_path(), "../precompiled"))
    artifact = NifBuild.pack!(built, name, output)
    sum = NifBuild.sha256(File.read!(artifact))

    checksum_file = Path.expand(opts[:checksum_file] || NifBuild.checksum_path())

    checksums =
      checksum_file
      |> NifBuild.read_checksums()
      |> Map.filter(fn {file, _} -> NifBuild.listed_targets(%{file => ""}, version) != [] end)
      |> Map.put(name, sum)

    NifBuild.write_checksums(checksum_file, checksums)
    Mix.shell().info("#{artifact}\n#{sum}\nrecorded in #{checksum_file}")
  end
end

defmodule Mix.Tasks.LibclusterDroplet.Checksum do
  @shortdoc "Writes the checksum file from a directory of NIF artifacts"
  @moduledoc """
  Writes `checksum-Elixir.LibclusterDroplet.Native.exs` with the SHA-256 of
  every artifact of this version found in the given directories (what the
  release workflow downloaded from its build jobs), replacing its contents.

      mix libcluster_droplet.checksum DIR... [--checksum-file FILE]
  """
  use Mix.Task

  alias LibclusterDroplet.NifBuild

  @impl true
  def run(args) do
    {opts, dirs, _} = OptionParser.parse(args, strict: [checksum_file: :string])
    version = Mix.Project.config()[:version]
    if dirs == [], do: Mix.raise("usage: mix libcluster_droplet.checksum DIR...")

    checksums =
      for dir <- dirs,
          path <- Path.wildcard(Path.join(Path.expand(dir), "*.so.tar.gz")),
          name = Path.basename(path),
          NifBuild.listed_targets(%{name => ""}, version) != [],
          into: %{},
          do: {name, NifBuild.sha256(File.read!(path))}

    if checksums == %{}, do: Mix.raise("no artifact of version #{version} in #{inspect(dirs)}")

    file = Path.expand(opts[:checksum_file] || NifBuild.checksum_path())
    NifBuild.write_checksums(file, checksums)

    Mix.shell().info(
      "#{map_size(checksums)} artifacts recorded in #{file}: " <>
        Enum.join(NifBuild.listed_targets(checksums, version) |> Enum.sort(), ", ")
    )
  end
end
