defmodule LibclusterDroplet.Application do
  @moduledoc false
  # Owns the table of LibclusterDroplet.Store, so that what a strategy
  # stores outlives the strategy.

  use Application

  @impl true
  def start(_type, _args) do
    Supervisor.start_link([LibclusterDroplet.Store],
      strategy: :one_for_one,
      name: LibclusterDroplet.Supervisor
    )
  end
end
