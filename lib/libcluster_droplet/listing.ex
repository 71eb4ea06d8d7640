defmodule LibclusterDroplet.Listing do
  @moduledoc """
  The result of a successful droplet listing.

    * `:droplets` - the droplets of every page, deduplicated by id, in API
      order (see `t:LibclusterDroplet.droplet/0`). With `:autoscale_pool`,
      each carries `:pool`, its membership (`nil` for a droplet that is not
      a member), and the members whose droplet was not listed follow, each
      as a droplet with status `"not listed"` and no address.
    * `:total` - the API's `meta.total`, summed over several listings.
    * `:requests` - HTTP requests made, every listing (and pool lookup and
      member page) counted.
    * `:rate_limit` - the rate-limit headers of the response with the fewest
      requests remaining, or `nil` if the API sent none.
    * `:elapsed_us` - wall time of the whole listing.
    * `:pool` - with `:autoscale_pool`, `%{id, name, tags, members, active}`:
      the pool, its template's tags and its member counts.
  """

  defstruct droplets: [], total: 0, requests: 0, rate_limit: nil, elapsed_us: 0, pool: nil

  @type pool :: %{
          id: String.t(),
          name: String.t(),
          tags: [String.t()],
          members: non_neg_integer(),
          active: non_neg_integer()
        }

  @type t :: %__MODULE__{
          droplets: [LibclusterDroplet.droplet()],
          total: non_neg_integer(),
          requests: non_neg_integer(),
          rate_limit: LibclusterDroplet.rate_limit() | nil,
          elapsed_us: non_neg_integer(),
          pool: pool() | nil
        }

  @doc false
  # Turns the last two elements of a `{:droplet_nif_list, ref, result, info}`
  # message into the public result.
  @spec from_nif(term(), map()) :: {:ok, t()} | {:error, term()}
  def from_nif({:ok, %{droplets: droplets, total: total} = result}, info) do
    {droplets, pool} = join(droplets, Map.get(result, :pool))

    {:ok,
     %__MODULE__{
       droplets: droplets,
       total: total,
       requests: Map.get(info, :requests, 0),
       rate_limit: Map.get(info, :rate_limit),
       elapsed_us: Map.get(info, :elapsed_us, 0),
       pool: pool
     }}
  end

  def from_nif({:error, reason}, _info), do: {:error, reason}

  @unlisted "not listed"

  @doc false
  # Whether `droplet` stands for a pool member whose droplet was not listed:
  # it has none of a droplet's fields (region, vpc_uuid...) to filter on.
  def unlisted?(droplet),
    do: Map.get(droplet, :status) == @unlisted and Map.has_key?(droplet, :pool)

  # A member carries no name and no address: they come from the droplet
  # listing, matched by id.
  defp join(droplets, nil), do: {droplets, nil}

  defp join(droplets, %{members: members} = pool) do
    by_id = Map.new(members, &{&1.droplet_id, &1})
    listed = MapSet.new(droplets, & &1.id)

    unlisted =
      for %{droplet_id: id} = member <- members, not MapSet.member?(listed, id) do
        %{id: id, name: "droplet #{id}", status: @unlisted, address: nil, pool: member}
      end

    summary = %{
      id: pool.id,
      name: pool.name,
      tags: pool.tags,
      members: length(members),
      active: Enum.count(members, &(&1.status == "active"))
    }

    {Enum.map(droplets, &Map.put(&1, :pool, by_id[&1.id])) ++ unlisted, summary}
  end
end
