defmodule LibclusterDroplet.Native do
  @moduledoc false
  # The Rust NIF `droplet_nif`. RustlerPrecompiled installs it when this
  # module compiles: the precompiled artifact of this version and target,
  # checked against checksum-Elixir.LibclusterDroplet.Native.exs, or a cargo
  # build through Rustler when asked to (LibclusterDroplet.Native.Build has
  # the knobs and the error messages).

  alias LibclusterDroplet.Native.Build

  @options Build.options(
             Mix.Project.config(),
             Application.compile_env(:libcluster_droplet, :precompiled_base_url)
           )

  Build.check_source_build!(@options)

  try do
    use RustlerPrecompiled, @options
  rescue
    error in RuntimeError -> Build.explain!(error, @options)
  end

  # native/README.md ("The NIF's contract") gives each function's arguments,
  # bounds and answers.
  def nif_version, do: :erlang.nif_error(:nif_not_loaded)
  def list_droplets(_request, _ref), do: :erlang.nif_error(:nif_not_loaded)
  def probe(_addresses, _check, _concurrency, _ref), do: :erlang.nif_error(:nif_not_loaded)
  def cancel(_handle), do: :erlang.nif_error(:nif_not_loaded)

  # Only in this repository's own builds (the test-panic feature), for its tests.
  def debug_panic(_where, _ref), do: :erlang.nif_error(:nif_not_loaded)
  def debug_thread_times, do: :erlang.nif_error(:nif_not_loaded)
  def debug_hold(_kind, _ms), do: :erlang.nif_error(:nif_not_loaded)
  def debug_budget, do: :erlang.nif_error(:nif_not_loaded)
  def debug_admit(_helpers), do: :erlang.nif_error(:nif_not_loaded)
  def debug_release(_held), do: :erlang.nif_error(:nif_not_loaded)
  def debug_dns_delay(_ms), do: :erlang.nif_error(:nif_not_loaded)
end
