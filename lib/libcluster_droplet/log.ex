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

  # A failed poll's warning: the class, the message, the token's source
  # after a 401 (never the token), the pool when it is not found, and what
  # happens next. An unknown pool is warned about once (until a poll
  # succeeds), every other failure each time.
  def poll_failed(warned, topology, reason, config, kept, delay) do
    alias LibclusterDroplet.Error

    source =
      case reason do
        :unauthorized -> " (token from #{LibclusterDroplet.Token.describe(config.token)})"
        :pool_not_found -> " (autoscale_pool: #{inspect(config.autoscale_pool)})"
        _ -> ""
      end

    message = fn ->
      "DigitalOcean API poll failed (#{Error.class(reason)}): #{Error.format(reason)}#{source}; " <>
        "keeping the #{kept} nodes as they are, next poll in #{delay} ms"
    end

    if reason == :pool_not_found,
      do: once(warned, topology, {:pool, config.autoscale_pool}, message),
      else: warn(topology, message.()) && warned
  end

  # A warning logged once per key: `warned` is the set of keys already
  # warned about. prune/2 keeps it bounded: keys about a droplet name last
  # while the name is listed, keys about a share's sender while it is
  # connected.
  def once(warned, topology, key, message_fun) do
    if MapSet.member?(warned, key) do
      warned
    else
      warn(topology, message_fun.())
      MapSet.put(warned, key)
    end
  end

  # The once-only warnings about droplets whose names make no node name.
  def unusable(warned, topology, verdicts) do
    Enum.reduce(verdicts, warned, fn
      %{stage: :unusable_name, why: why} = v, warned ->
        once(warned, topology, {:name, v.name}, fn ->
          "skipping droplet #{inspect(v.name)}: " <>
            LibclusterDroplet.Explain.Format.describe_unusable(why, v.address)
        end)

      _verdict, warned ->
        warned
    end)
  end

  def prune(warned, verdicts) do
    names = MapSet.new(verdicts, & &1.name)
    connected = MapSet.new(Node.list())

    MapSet.filter(warned, fn
      {:name, name} -> MapSet.member?(names, name)
      {:share, sender, _} -> MapSet.member?(connected, sender)
      {:pool, _} -> false
    end)
  end

  defp prefix(topology), do: "[libcluster:#{topology}] "
end
