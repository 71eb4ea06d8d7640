defmodule LibclusterDroplet.Listing do
  @moduledoc """
  The result of a successful droplet listing.

    * `:droplets` - the droplets of every page, deduplicated by id, in API order
      (see `t:LibclusterDroplet.droplet/0`).
    * `:total` - the API's `meta.total`; with several listings (a list of
      tags, GPU droplets), the sum of theirs.
    * `:requests` - HTTP requests the listing made, every listing counted.
    * `:rate_limit` - the rate-limit headers of the response with the fewest
      requests remaining, or `nil` if the API sent none.
    * `:elapsed_us` - wall time of the whole listing.
  """

  defstruct droplets: [], total: 0, requests: 0, rate_limit: nil, elapsed_us: 0

  @type t :: %__MODULE__{
          droplets: [LibclusterDroplet.droplet()],
          total: non_neg_integer(),
          requests: non_neg_integer(),
          rate_limit: LibclusterDroplet.rate_limit() | nil,
          elapsed_us: non_neg_integer()
        }

  @doc false
  # Turns the last two elements of a `{:droplet_nif_list, ref, result, info}`
  # message into the public result.
  @spec from_nif(term(), map()) :: {:ok, t()} | {:error, term()}
  def from_nif({:ok, %{droplets: droplets, total: total}}, info) do
    {:ok,
     %__MODULE__{
       droplets: droplets,
       total: total,
       requests: Map.get(info, :requests, 0),
       rate_limit: Map.get(info, :rate_limit),
       elapsed_us: Map.get(info, :elapsed_us, 0)
     }}
  end

  def from_nif({:error, reason}, _info), do: {:error, reason}
end
