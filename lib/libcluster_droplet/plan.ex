defmodule LibclusterDroplet.Plan do
  @probe_strikes 3

  @moduledoc """
  The desired set: which of a view's selected nodes this node wants
  connected, given their health checks and the nodes it manages already.

  A node that is not yet managed needs one passing check; a node already
  managed is dropped only after #{@probe_strikes} failed checks in a row,
  so one lost SYN or a full accept queue never costs a healthy node its
  connections. A node dropped for its checks is never disconnected for
  them: checks are this node's view, and a local fault must not evict
  anyone. When this node must be listed to join and is not, the desired set
  is empty.
  """

  @typedoc "A health check's verdict on one node."
  @type health :: :ok | {:error, term()}

  @typedoc "Consecutive failed checks of managed nodes."
  @type strikes :: %{node() => pos_integer()}

  @doc "How many failed checks in a row drop a node that is already managed."
  @spec probe_strikes() :: pos_integer()
  def probe_strikes, do: @probe_strikes

  @doc """
  The desired set and the new strike counts. `targets` are the selected
  nodes; `health` is `:unchecked` (no health check: every target is wanted)
  or a map from node to its verdict; `managed`, the set this node manages
  now; `unlisted?`, whether this node must be listed to join and is not.

      iex> alias LibclusterDroplet.Plan
      iex> health = %{:"a@h" => {:error, :timeout}, :"b@h" => {:error, :timeout}}
      iex> {desired, strikes} = Plan.decide([:"a@h", :"b@h"], health, MapSet.new([:"a@h"]), %{}, false)
      iex> {MapSet.to_list(desired), strikes}
      {[:"a@h"], %{:"a@h" => 1}}
  """
  @spec decide(
          [node()],
          :unchecked | %{node() => health()},
          MapSet.t(node()),
          strikes(),
          boolean()
        ) ::
          {MapSet.t(node()), strikes()}
  def decide(_targets, _health, _managed, _strikes, true = _unlisted?), do: {MapSet.new(), %{}}
  def decide(targets, :unchecked, _managed, _strikes, false), do: {MapSet.new(targets), %{}}

  def decide(targets, health, managed, strikes, false) when is_map(health) do
    Enum.reduce(targets, {MapSet.new(), %{}}, fn node, {desired, new_strikes} ->
      case Map.get(health, node, {:error, :not_checked}) do
        :ok ->
          {MapSet.put(desired, node), new_strikes}

        {:error, _} ->
          count = Map.get(strikes, node, 0) + 1

          if MapSet.member?(managed, node) and count < @probe_strikes,
            do: {MapSet.put(desired, node), Map.put(new_strikes, node, count)},
            else: {desired, new_strikes}
      end
    end)
  end
end
