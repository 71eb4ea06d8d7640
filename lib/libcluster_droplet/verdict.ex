defmodule LibclusterDroplet.Verdict do
  @moduledoc """
  Where one listed droplet stands: what `LibclusterDroplet.Pipeline`
  decided for it, the one place stages are decided. The strategy acts on
  verdicts, shares them with its followers, and explain and
  `mix libcluster_droplet.explain` render them.

    * `stage`, in the order a droplet goes through them:
      * `:outside_filters`: outside a client-side filter (`why`: each
        `{option, the droplet's value}`, see `LibclusterDroplet.Filters`);
      * `:not_active`: its status is not `active`;
      * `:no_address`: no address on the chosen network and IP version;
      * `:unusable_name`: its name (or `:node_basename`) and address make no
        node name (`why`: `{:invalid_basename | :invalid_address, basename}`);
      * `:duplicate`: an earlier droplet of the listing gives the same node name;
      * `:this_node`: the droplet of this very node;
      * `:selected`: a node to connect to.
    * `node`: the node name (`basename@address`), when there is one;
    * `health`: for a selected node, its health check's verdict (`:ok` or
      `{:error, reason}`), `nil` before (or without) one.
  """

  @enforce_keys [:name, :status, :address, :stage]
  defstruct [:id, :name, :status, :address, :stage, :node, :why, :health]

  @typedoc "A stage; see the module doc."
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

  @stages [
    :outside_filters,
    :not_active,
    :no_address,
    :unusable_name,
    :duplicate,
    :this_node,
    :selected
  ]

  @doc "Every stage, in order."
  @spec stages() :: [stage()]
  def stages, do: @stages
end
