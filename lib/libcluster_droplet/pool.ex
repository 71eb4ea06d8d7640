defmodule LibclusterDroplet.Pool do
  @moduledoc false
  # An autoscale pool, resolved once: its id, name and template tags, kept
  # by the strategy so that a poll costs only member pages and droplet
  # pages. It is resolved again when a lookup by id fails (the strategy
  # drops it on :pool_not_found) and every @refresh_ms, which notices a
  # renamed pool (the pool lookup, one request, is the only cost).

  @refresh_ms 10 * 60_000

  # The resolved pool to pass to the listing, or nil to resolve it again.
  def cached(%{at: at} = pool, now) when now - at < @refresh_ms, do: pool
  def cached(_pool, _now), do: nil

  # What a listing tells of the pool: kept with when it was resolved (the
  # listing resolved it unless it was passed a cached one).
  def listed(_cached, nil, _now), do: nil

  def listed(cached, %{id: id, name: name, tags: tags}, now) do
    at = if match?(%{id: ^id, at: _}, cached), do: cached.at, else: now
    %{id: id, name: name, tags: tags, at: at}
  end
end
