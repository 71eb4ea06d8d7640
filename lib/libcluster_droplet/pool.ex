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
  # A pool is kept only when the API named it fully: an empty or redacted
  # id or name sent back would fail every poll as an invalid request (not
  # :pool_not_found, so it would never be dropped); without it, the next
  # poll looks the pool up again by the configured option.
  def listed(cached, %{id: id, name: name, tags: tags}, now) do
    if named?(id) and named?(name) do
      at = if match?(%{id: ^id, at: _}, cached), do: cached.at, else: now
      %{id: id, name: name, tags: tags, at: at}
    end
  end

  def listed(_cached, _pool, _now), do: nil

  defp named?(text),
    do: is_binary(text) and text != "" and not String.contains?(text, "[REDACTED]")
end
