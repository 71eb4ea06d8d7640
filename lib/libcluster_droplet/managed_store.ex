defmodule LibclusterDroplet.ManagedStore do
  @moduledoc false
  # What a strategy must not forget when it is restarted: the nodes it
  # manages, the nodes it is removing, and its API backoff (consecutive
  # failures, the rate-limit floor, the time of the next poll).
  #
  # It lives in `:persistent_term` under a key made of the topology and the
  # fingerprint of the options that decide which nodes are selected, so a
  # strategy restarted with another configuration starts afresh instead of
  # adopting (and later disconnecting) nodes it never selected. Entries of
  # the same topology under another fingerprint are erased when a strategy
  # starts. A strategy that shuts down normally erases its entry; one that
  # crashes or is killed leaves it for its successor.
  #
  # Writes happen only when something changed: replacing a persistent term
  # costs a scan of every process.

  defstruct managed: MapSet.new(),
            removing: %{},
            failures: 0,
            not_before: nil,
            next_poll_at: nil

  @type t :: %__MODULE__{
          managed: MapSet.t(node()),
          removing: %{node() => map()},
          failures: non_neg_integer(),
          not_before: integer() | nil,
          next_poll_at: integer() | nil
        }

  @type key :: {module(), atom(), non_neg_integer()}

  @doc "The key of a topology's entry under a configuration fingerprint."
  @spec key(atom(), non_neg_integer()) :: key()
  def key(topology, fingerprint), do: {__MODULE__, topology, fingerprint}

  @doc """
  Loads the entry under `key` (an empty one if there is none) and erases
  the topology's entries under any other fingerprint.
  """
  @spec load(key()) :: t()
  def load({__MODULE__, topology, _fingerprint} = key) do
    for {{__MODULE__, ^topology, _} = other, _} <- :persistent_term.get(),
        other != key,
        do: :persistent_term.erase(other)

    case :persistent_term.get(key, nil) do
      %__MODULE__{} = stored -> stored
      _ -> %__MODULE__{}
    end
  end

  @doc "Saves `stored` under `key` unless it is what is stored already."
  @spec save(key(), t()) :: :ok
  def save(key, %__MODULE__{} = stored) do
    if :persistent_term.get(key, nil) != stored, do: :persistent_term.put(key, stored)
    :ok
  end

  @doc "Erases the entry under `key`."
  @spec erase(key()) :: :ok
  def erase(key) do
    :persistent_term.erase(key)
    :ok
  end
end
