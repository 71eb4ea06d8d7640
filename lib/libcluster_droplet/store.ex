defmodule LibclusterDroplet.Store do
  @moduledoc false
  # What must outlive a strategy process: per topology, the nodes it
  # manages, those it is removing and its backoff; per API URL, the
  # rate-limit floor. One ETS table owned by the application's process, so
  # a crashed or killed strategy leaves its entry to its successor; a write
  # is a table insert, not a persistent term (which makes the VM scan every
  # process). Without the application started, the first caller owns it.

  use GenServer

  @table __MODULE__

  defmodule Entry do
    @moduledoc false
    defstruct fingerprint: nil,
              managed: MapSet.new(),
              removing: %{},
              failures: 0,
              next_poll_at: nil
  end

  def start_link(_opts), do: GenServer.start_link(__MODULE__, :ok, name: __MODULE__)

  @impl true
  def init(:ok) do
    table()
    {:ok, nil}
  end

  defp table do
    case :ets.whereis(@table) do
      :undefined ->
        try do
          :ets.new(@table, [:named_table, :public, :set, read_concurrency: true])
        rescue
          # Created meanwhile by another process.
          ArgumentError -> @table
        end

      _ref ->
        @table
    end
  end

  # The entry saved under `fingerprint` (the options that decide the
  # selection), else an empty one: a strategy restarted with another
  # configuration must not adopt (and later remove) nodes it never selected.
  def load(topology, fingerprint) do
    case :ets.lookup(table(), {:topology, topology}) do
      [{_, %Entry{fingerprint: ^fingerprint} = entry}] -> entry
      _ -> %Entry{fingerprint: fingerprint}
    end
  end

  def save(topology, fingerprint, members, schedule) do
    entry = %Entry{
      fingerprint: fingerprint,
      managed: members.managed,
      removing: members.removing,
      failures: schedule.failures,
      next_poll_at: schedule.next_poll_at
    }

    :ets.insert(table(), {{:topology, topology}, entry})
    :ok
  end

  def erase(topology) do
    :ets.delete(table(), {:topology, topology})
    :ok
  end

  # The floor of `api_url`, in Unix ms, or nil.
  def floor(api_url) do
    case :ets.lookup(table(), {:floor, api_url}) do
      [{_, not_before}] -> not_before
      [] -> nil
    end
  end

  # Raises the floor of `api_url` to `not_before`, never lowers it; a
  # compare-and-set, as another process may raise it at the same time.
  def raise_floor(api_url, not_before) do
    key = {:floor, api_url}
    table = table()

    case :ets.lookup(table, key) do
      [] ->
        unless :ets.insert_new(table, {key, not_before}), do: raise_floor(api_url, not_before)

      [{_, current} = old] when current < not_before ->
        if :ets.select_replace(table, [{old, [], [{:const, {key, not_before}}]}]) == 0,
          do: raise_floor(api_url, not_before)

      _higher ->
        :ok
    end

    :ok
  end
end
