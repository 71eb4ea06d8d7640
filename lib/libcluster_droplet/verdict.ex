defmodule LibclusterDroplet.Verdict do
  @moduledoc """
  Where one listed droplet stands. The strategy decides one verdict per
  droplet, in one place, acts on them, shares them with its followers, and
  explain renders them.

  `stage`, in the order a droplet goes through them: `:outside_filters` (a
  client-side filter such as `:regions` or `:vpc` leaves it out; `why` is
  `[{option, the droplet's value}]`), `:not_active`, `:no_address` (none on
  the chosen network and IP version), `:unusable_name` (its name, or
  `:node_basename`, and address make no node name; `why` says which),
  `:duplicate` (an earlier droplet of the listing gives the same node
  name), `:this_node`, or `:selected`. `node` is its node name when it has
  one; `health`, a selected node's health check result (`nil` before one).
  """

  @enforce_keys [:name, :status, :address, :stage]
  defstruct [:id, :name, :status, :address, :stage, :node, :why, :health]

  @stages ~w(outside_filters not_active no_address unusable_name duplicate this_node selected)a

  @type stage ::
          :outside_filters
          | :not_active
          | :no_address
          | :unusable_name
          | :duplicate
          | :this_node
          | :selected

  @type t :: %__MODULE__{
          id: non_neg_integer() | nil,
          name: String.t(),
          status: atom() | String.t(),
          address: String.t() | nil,
          stage: stage(),
          node: node() | nil,
          why: term(),
          health: LibclusterDroplet.HealthCheck.result() | nil
        }

  @doc "Every stage, in order."
  @spec stages() :: [stage()]
  def stages, do: @stages
end
