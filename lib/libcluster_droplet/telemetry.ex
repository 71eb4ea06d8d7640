defmodule LibclusterDroplet.Telemetry do
  @moduledoc false
  # `:telemetry` is an optional dependency: events are emitted only when the
  # host application has it loaded.

  @compile {:no_warn_undefined, :telemetry}

  # The poll's events: start, stop (with the counts per stage) and error.
  def poll_start(topology),
    do: emit(:start, %{system_time: System.system_time()}, %{topology: topology})

  def poll_stop(topology, poll, verdicts, members) do
    listing = poll.listing
    counts = stage_counts(listing, verdicts, LibclusterDroplet.Members.connected(members))
    measurements = Map.put(counts, :duration, System.monotonic_time() - poll.started)
    metadata = %{topology: topology, droplets: length(listing.droplets)}
    emit(:stop, measurements, Map.put(metadata, :nodes, MapSet.size(members.managed)))
  end

  def poll_error(topology, started, class, failures) do
    measurements = %{duration: System.monotonic_time() - started}
    emit(:error, measurements, %{topology: topology, reason: class, failures: failures})
  end

  defp emit(event, measurements, metadata),
    do: execute([:libcluster_droplet, :poll, event], measurements, metadata)

  # The poll stop event's counts per stage, for alerting on "listed but not
  # connected": droplets listed, nodes selected (this one aside), of those
  # the ones passing the health check and the ones `connected` now; with
  # an autoscale pool, its members and its active members (0 without).
  def stage_counts(listing, verdicts, connected) do
    selected = for %{stage: :selected} = v <- verdicts, do: v
    connected = MapSet.new(connected)

    pool = listing.pool || %{members: 0, active: 0}

    %{
      requests: listing.requests,
      members: pool.members,
      active_members: pool.active,
      listed: length(listing.droplets),
      selected: length(selected),
      healthy: Enum.count(selected, &(&1.health == :ok)),
      connected: Enum.count(selected, &MapSet.member?(connected, &1.node))
    }
  end

  @spec execute([atom()], map(), map()) :: :ok
  def execute(event, measurements, metadata) do
    if Code.ensure_loaded?(:telemetry) do
      :telemetry.execute(event, measurements, metadata)
    end

    :ok
  end
end
