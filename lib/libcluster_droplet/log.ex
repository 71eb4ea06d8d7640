defmodule LibclusterDroplet.Log do
  @moduledoc false
  # Log lines in libcluster's format: prefixed `[libcluster:<topology>] `,
  # debug lines only with `config :libcluster, debug: true`.

  require Logger

  def debug(topology, message_fun) when is_function(message_fun, 0) do
    if Application.get_env(:libcluster, :debug, false) do
      Logger.debug(fn -> prefix(topology) <> message_fun.() end)
    end

    :ok
  end

  def info(topology, message), do: Logger.info(prefix(topology) <> message)
  def warn(topology, message), do: Logger.warning(prefix(topology) <> message)
  def error(topology, message), do: Logger.error(prefix(topology) <> message)

  defp prefix(topology), do: "[libcluster:#{topology}] "
end
