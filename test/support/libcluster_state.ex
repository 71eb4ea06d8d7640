unless Code.ensure_loaded?(Cluster.Strategy.State) do
  defmodule Cluster.Strategy.State do
    @moduledoc false
    # The fields of libcluster 3.5's %Cluster.Strategy.State{}, which
    # Cluster.Supervisor hands to a strategy's start_link/1
    # (see ../shared/libcluster-contract.md). libcluster itself cannot be
    # fetched here; tests build the same struct to start the strategy exactly
    # as Cluster.Supervisor does.
    defstruct topology: nil,
              connect: {:net_kernel, :connect_node, []},
              disconnect: {:erlang, :disconnect_node, []},
              list_nodes: {:erlang, :nodes, [:connected]},
              config: [],
              meta: nil
  end
end
