defmodule LibclusterDroplet.SpyMembership do
  @moduledoc """
  Connect, disconnect and list MFAs in libcluster's shape that touch no
  network: they keep the "connected" nodes in an Agent and record every
  call, so a test sees exactly what a strategy did.

      spy = SpyMembership.start()
      {Cluster.Strategy.Droplet, topology: :t, config: config} ++ SpyMembership.mfas(spy)
  """

  @doc "Starts a spy (not linked: it outlives short-lived callers)."
  @spec start([node()]) :: pid()
  def start(connected \\ []) do
    {:ok, pid} = Agent.start(fn -> %{connected: MapSet.new(connected), events: []} end)
    pid
  end

  @doc "`connect:`, `disconnect:` and `list_nodes:` options for the strategy."
  @spec mfas(pid()) :: keyword()
  def mfas(spy) do
    [
      connect: {__MODULE__, :connect, [spy]},
      disconnect: {__MODULE__, :disconnect, [spy]},
      list_nodes: {__MODULE__, :list_nodes, [spy]}
    ]
  end

  @doc false
  def connect(spy, node) do
    Agent.update(
      spy,
      &%{&1 | connected: MapSet.put(&1.connected, node), events: [{:connect, node} | &1.events]}
    )

    true
  end

  @doc false
  def disconnect(spy, node) do
    Agent.update(
      spy,
      &%{
        &1
        | connected: MapSet.delete(&1.connected, node),
          events: [{:disconnect, node} | &1.events]
      }
    )

    true
  end

  @doc false
  def list_nodes(spy), do: Agent.get(spy, &MapSet.to_list(&1.connected))

  @doc "The nodes currently \"connected\", sorted."
  @spec connected(pid()) :: [node()]
  def connected(spy), do: spy |> list_nodes() |> Enum.sort()

  @doc "Every connect and disconnect, oldest first."
  @spec events(pid()) :: [{:connect | :disconnect, node()}]
  def events(spy), do: Agent.get(spy, &Enum.reverse(&1.events))

  @doc "Simulates a connection dropping on its own (not through the strategy)."
  @spec drop(pid(), node()) :: :ok
  def drop(spy, node),
    do: Agent.update(spy, &%{&1 | connected: MapSet.delete(&1.connected, node)})
end
