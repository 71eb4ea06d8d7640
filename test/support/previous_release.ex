defmodule LibclusterDroplet.PreviousRelease do
  @moduledoc """
  A release of this project taken from the repository's history, as a
  consumer application's dependency, for `test/rolling_upgrade_test.exs`.

  `consumer!/3` extracts the release's package (the `files` its own
  `mix.exs` lists, with `git archive`) and builds a consumer application
  against it that is the one `LibclusterDroplet.ConsumerApp.build!/1` made
  for this tree in every other respect: the same `mix.exs` (only the
  `libcluster_droplet` path differs), application, endpoint and
  `config/runtime.exs`, and the same copy of the vendored Hex packages.
  The result is a `LibclusterDroplet.ConsumerApp`, so
  `ConsumerApp.start_node/5` starts nodes of either release alike.
  """

  alias LibclusterDroplet.ConsumerApp

  @doc "Whether `commit` is a commit of the repository at `root` (false without git)."
  @spec commit_present?(Path.t(), String.t()) :: boolean()
  def commit_present?(root, commit) do
    args = ["-C", root, "rev-parse", "--verify", "--quiet", commit <> "^{commit}"]
    match?({_, 0}, System.cmd("git", args, stderr_to_stdout: true))
  rescue
    # No git on the PATH.
    ErlangError -> false
  end

  @doc """
  Builds a consumer application like `app` (this tree's, from
  `ConsumerApp.build!/1`) against the package of `commit` in the
  repository at `root`. Its NIF is built from source like `app`'s, by
  cargo in `target_dir(root, commit)`, which is kept between runs so that
  only the first one compiles the crates. Uses `app`'s copy of the vendored
  packages: clean it up after this one.
  """
  @spec consumer!(ConsumerApp.t(), Path.t(), String.t()) :: ConsumerApp.t()
  def consumer!(%ConsumerApp{} = app, root, commit) do
    tmp =
      Path.join(
        System.tmp_dir!(),
        "libcluster_droplet_#{commit}_#{System.pid()}_#{System.unique_integer([:positive])}"
      )

    try do
      package = extract!(root, commit, Path.join(tmp, "libcluster_droplet"))

      build!(
        app,
        package,
        tmp,
        List.keystore(
          app.env,
          "CARGO_TARGET_DIR",
          0,
          {"CARGO_TARGET_DIR", target_dir(root, commit)}
        )
      )
    rescue
      error ->
        File.rm_rf(tmp)
        reraise error, __STACKTRACE__
    end
  end

  @doc "Where cargo builds the NIF of `commit` for consumer applications."
  @spec target_dir(Path.t(), String.t()) :: Path.t()
  def target_dir(root, commit), do: Path.join(root, "_build/test_consumers_native_#{commit}")

  @doc """
  Writes the package of `commit` to `dest`: the `files` that the `mix.exs`
  of that commit lists (read as data, never evaluated), as `git archive`
  gives them. Returns `dest`.
  """
  @spec extract!(Path.t(), String.t(), Path.t()) :: Path.t()
  def extract!(root, commit, dest) do
    files = package_files!(git!(root, ["show", "#{commit}:mix.exs"]))
    File.mkdir_p!(dest)
    tar = dest <> ".tar"
    git!(root, ["archive", "--format=tar", "-o", tar, commit, "--"] ++ files)
    {out, status} = System.cmd("tar", ["-x", "-f", tar, "-C", dest], stderr_to_stdout: true)
    File.rm!(tar)
    if status != 0, do: raise("extracting #{commit}'s package failed (#{status}): #{out}")
    dest
  end

  # The literal list of `@files` in a mix.exs.
  defp package_files!(mix_exs) do
    {_, files} =
      mix_exs
      |> Code.string_to_quoted!()
      |> Macro.prewalk(nil, fn
        {:@, _, [{:files, _, [files]}]} = node, nil when is_list(files) -> {node, files}
        node, acc -> {node, acc}
      end)

    if is_list(files) and files != [] and Enum.all?(files, &is_binary/1),
      do: files,
      else: raise("no literal list of strings in @files of mix.exs:\n#{mix_exs}")
  end

  defp git!(root, args) do
    case System.cmd("git", ["-C", root | args], stderr_to_stdout: true) do
      {out, 0} -> out
      {out, status} -> raise "git #{Enum.join(args, " ")} failed (#{status}): #{out}"
    end
  end

  defp build!(app, package, tmp, env) do
    dir = Path.join(tmp, "consumer_app")
    File.mkdir_p!(dir)

    for entry <- ["mix.exs", "lib", "config"],
        do: File.cp_r!(Path.join(app.dir, entry), Path.join(dir, entry))

    mix_exs = Path.join(dir, "mix.exs")
    pattern = ~r/\{:libcluster_droplet, path: "[^"]*"\}/

    case Regex.scan(pattern, File.read!(mix_exs)) do
      [_one] ->
        :ok

      found ->
        raise "expected one libcluster_droplet dependency in #{mix_exs}, found #{inspect(found)}"
    end

    replacement = "{:libcluster_droplet, path: #{inspect(package)}}"
    File.write!(mix_exs, Regex.replace(pattern, File.read!(mix_exs), replacement))

    started = System.monotonic_time(:millisecond)
    {out, status} = ConsumerApp.mix(dir, ["compile"], env)

    if status != 0,
      do: raise("compiling the consumer application in #{dir} failed (#{status}):\n#{out}")

    build = Path.join(dir, "_build/prod")

    code_paths =
      Enum.filter([Path.join(build, "lib/consumer_app/consolidated")], &File.dir?/1) ++
        Path.wildcard(Path.join(build, "lib/*/ebin")) ++
        Enum.map([:elixir, :logger], &Path.join(:code.lib_dir(&1), "ebin"))

    %ConsumerApp{
      app
      | tmp: tmp,
        dir: dir,
        code_paths: code_paths,
        runtime_exs: Path.join(dir, "config/runtime.exs"),
        env: env,
        compile_output: out,
        compile_ms: System.monotonic_time(:millisecond) - started
    }
  end
end
