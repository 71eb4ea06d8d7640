defmodule LibclusterDroplet.Plan do
  @moduledoc false
  # The desired set: which selected nodes this node wants connected. A new
  # node needs one passing check; a managed one is dropped only after
  # @probe_strikes failed checks in a row (one lost SYN must not cost a
  # healthy node its connections), and never disconnected for them.

  @probe_strikes 3

  @type strikes :: %{node() => pos_integer()}

  def probe_strikes, do: @probe_strikes

  @doc """
  The desired set and the new strikes, from the selected `targets`, their
  `health` (`:unchecked`, or node => verdict), the `managed` nodes and
  whether this node is `unlisted?` (then it wants no one).

      iex> alias LibclusterDroplet.Plan
      iex> health = %{:"a@h" => {:error, :timeout}, :"b@h" => {:error, :timeout}}
      iex> {desired, strikes} = Plan.decide([:"a@h", :"b@h"], health, MapSet.new([:"a@h"]), %{}, false)
      iex> {MapSet.to_list(desired), strikes}
      {[:"a@h"], %{:"a@h" => 1}}
  """
  @spec decide([node()], :unchecked | map(), MapSet.t(node()), strikes(), boolean()) ::
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
