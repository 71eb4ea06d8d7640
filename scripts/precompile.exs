# For maintainers, in a checkout: builds the precompiled NIF of this
# machine's target and records it in the checksum file, on one machine and
# without CI (.github/workflows/release.yml builds every target; see
# CONTRIBUTING.md, "Publishing"). Run by `make precompile`, that is
#
#     mix run --no-start scripts/precompile.exs [--output DIR]
#
# `cargo build --release --locked -p droplet_nif` (no test-only NIFs, in
# CARGO_TARGET_DIR or target/), packed as the artifact RustlerPrecompiled
# looks for, libdroplet_nif-v<version>-nif-2.16-<target>.so.tar.gz, in DIR
# (default _build/precompiled); its SHA-256 goes into the checksum file,
# whose lines of other versions are dropped. A script, not a Mix task in
# lib/, so that the package's users never get it.
defmodule LibclusterDroplet.Precompile do
  @checksum_file "checksum-Elixir.LibclusterDroplet.Native.exs"

  def run(args) do
    {opts, _} = OptionParser.parse!(args, strict: [output: :string])
    version = Mix.Project.config()[:version]
    # The name RustlerPrecompiled computed for this target while compiling.
    [{name, _url}] = RustlerPrecompiled.current_target_nifs(LibclusterDroplet.Native)
    library = cargo_build!()
    output = Path.expand(opts[:output] || Path.join(Mix.Project.build_path(), "../precompiled"))
    artifact = Path.join(output, name)

    # One member, named as RustlerPrecompiled extracts and loads it.
    File.mkdir_p!(output)
    member = {String.to_charlist(String.replace_suffix(name, ".tar.gz", "")), File.read!(library)}
    :ok = :erl_tar.create(String.to_charlist(artifact), [member], [:compressed])
    sum = "sha256:" <> Base.encode16(:crypto.hash(:sha256, File.read!(artifact)), case: :lower)

    checksums =
      @checksum_file
      |> read_checksums()
      |> Map.filter(fn {file, _} -> String.contains?(file, "-v#{version}-") end)
      |> Map.put(name, sum)

    # As `mix format` writes it: the file is among the formatter's inputs.
    text = inspect(checksums, limit: :infinity, printable_limit: :infinity)
    File.write!(@checksum_file, [Code.format_string!(text), "\n"])
    Mix.shell().info("#{artifact}\n#{sum}\nrecorded in #{@checksum_file}")
  end

  # The release profile of Cargo.toml, exactly the crates of Cargo.lock.
  defp cargo_build! do
    target_dir = System.get_env("CARGO_TARGET_DIR") || "target"
    args = ~w(build --release --locked -p droplet_nif)

    case System.cmd("cargo", args, into: IO.stream(:stdio, :line), stderr_to_stdout: true) do
      {_, 0} -> :ok
      {_, status} -> Mix.raise("cargo build failed (exit status #{status})")
    end

    extension = if match?({:unix, :darwin}, :os.type()), do: "dylib", else: "so"
    Path.join([target_dir, "release", "libdroplet_nif.#{extension}"])
  end

  defp read_checksums(path) do
    with {:ok, text} <- File.read(path),
         {:ok, {:%{}, _, pairs}} <- Code.string_to_quoted(text) do
      Map.new(pairs)
    else
      _ -> %{}
    end
  end
end

LibclusterDroplet.Precompile.run(System.argv())
