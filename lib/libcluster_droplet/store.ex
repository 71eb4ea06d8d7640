defmodule LibclusterDroplet.Store do
  @moduledoc """
  What must outlive a strategy process: per topology, the nodes it
  manages, the nodes it is removing and its API backoff; per API URL, the
  rate-limit floor (`LibclusterDroplet.Floor`).

  One ETS table, owned by a process of the `:libcluster_droplet`
  application, so a strategy that crashes or is killed leaves its entry to
  its successor (a table owned by the strategy would die with it). A
  strategy that shuts down normally erases its entry. Writes cost a table
  insert, nothing global (unlike a persistent term, which makes the VM
  scan every process).

  When the application is not started (`mix run --no-start`, say) the
  first caller creates the table and owns it: entries then live as long
  as that process.
  """

  use GenServer

  @table __MODULE__

  defmodule Entry do
    @moduledoc false
    defstruct fingerprint: nil,
              managed: MapSet.new(),
              removing: %{},
              failures: 0,
              next_poll_at: nil

    @type t :: %__MODULE__{
            fingerprint: non_neg_integer() | nil,
            managed: MapSet.t(node()),
            removing: map(),
            failures: non_neg_integer(),
            next_poll_at: integer() | nil
          }
  end

  @doc false
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

  @doc """
  A topology's entry under `fingerprint` (the options that decide which
  nodes are selected): an empty entry when it was saved under another one,
  so a strategy restarted with another configuration starts afresh instead
  of adopting (and later removing) nodes it never selected.
  """
  @spec load(atom(), non_neg_integer()) :: Entry.t()
  def load(topology, fingerprint) do
    case :ets.lookup(table(), {:topology, topology}) do
      [{_, %Entry{fingerprint: ^fingerprint} = entry}] -> entry
      _ -> %Entry{fingerprint: fingerprint}
    end
  end

  @doc "Saves what a topology's strategy must not forget, under its config's `fingerprint`."
  @spec save(
          atom(),
          non_neg_integer(),
          LibclusterDroplet.Members.t(),
          LibclusterDroplet.Schedule.t()
        ) ::
          :ok
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

  @doc "Erases a topology's entry."
  @spec erase(atom()) :: :ok
  def erase(topology) do
    :ets.delete(table(), {:topology, topology})
    :ok
  end

  @doc false
  # The floor of `api_url`, in Unix ms, or nil.
  @spec floor(String.t()) :: integer() | nil
  def floor(api_url) do
    case :ets.lookup(table(), {:floor, api_url}) do
      [{_, not_before}] -> not_before
      [] -> nil
    end
  end

  @doc false
  # Raises the floor of `api_url` to `not_before`; never lowers it. One
  # entry per API URL a strategy or a caller of list_droplets/1 used.
  @spec raise_floor(String.t(), integer()) :: :ok
  def raise_floor(api_url, not_before) do
    key = {:floor, api_url}
    table = table()

    # Compare-and-set: another process may raise it at the same time.
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
