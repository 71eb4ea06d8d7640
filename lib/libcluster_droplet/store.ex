defmodule LibclusterDroplet.Store do
  @moduledoc false
  # What must outlive a strategy process: per topology, the nodes it
  # manages, those it is removing and its backoff; per API URL, the
  # rate-limit floor (read and raised by LibclusterDroplet.Floor). One ETS
  # table owned by the application's process, so a crashed or killed
  # strategy leaves its entry to its successor; a write is a table insert,
  # not a persistent term (which makes the VM scan every process).

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

  # The table; without the application started, the first caller owns it.
  def table do
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
end
