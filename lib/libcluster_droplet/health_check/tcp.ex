defmodule LibclusterDroplet.HealthCheck.TCP do
  @default_timeout 500

  @moduledoc """
  `{:tcp, port: port, timeout: ms}`: the node passes when a TCP connection
  to its address and `port` is accepted within `timeout` ms (default
  #{@default_timeout}). Only the connection is made; nothing is sent.
  """

  @behaviour LibclusterDroplet.HealthCheck

  @impl true
  def validate(opts) do
    with true <- Keyword.keyword?(opts),
         {:ok, opts} <- Keyword.validate(opts, port: nil, timeout: @default_timeout),
         port when is_integer(port) and port in 1..65_535 <- opts[:port],
         timeout when is_integer(timeout) and timeout > 0 <- opts[:timeout] do
      {:ok, [port: port, timeout: timeout]}
    else
      _ ->
        {:error,
         "expected {:tcp, port: 1..65535, timeout: ms} (timeout a positive integer, default " <>
           "#{@default_timeout}; value not shown)"}
    end
  end

  @impl true
  def native(opts), do: %{kind: :tcp, port: opts[:port], timeout_ms: opts[:timeout]}

  @impl true
  def timeout(opts), do: opts[:timeout]

  @impl true
  def describe(opts), do: "port #{opts[:port]}"
end
