defmodule LibclusterDroplet.Filters do
  @moduledoc false
  # The client-side filters: options that keep only some listed droplets,
  # applied here (the API takes one tag_name or one name at a time, and
  # nothing else clusters care about). Each is declared once in @filters:
  # its option, the droplet field it reads (a key the NIF always returns,
  # or a JSON path such as ["size_slug"], which fields/0 asks the NIF to
  # pass through), and its option's words. Config builds its schema and
  # fingerprint from them, Pipeline applies them, explain words them. A new
  # filter is an entry here with its validate/2, outside?/3, describe/1 and
  # describable?/1 clauses, and a test.

  @uuid ~r/\A[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\z/
  @slug ~r/\A[a-z0-9]{1,32}\z/
  @max_values 64

  @filters [
    autoscale_pool: [
      field: :pool,
      type_doc: "`nil`, or a pool's name or UUID",
      doc:
        "only the members of this Droplet Autoscale Pool whose status is `active` (see " <>
          "the configuration guide for the requests it costs). Not with `:tag_name` or `:name`."
    ],
    pool_health: [
      field: :pool,
      type_doc: "`nil` or a list of health statuses",
      doc:
        "with `:autoscale_pool`, only members whose `health_status` is one of these (such " <>
          "as `[\"healthy\"]`). DigitalOcean does not list the values, so by default " <>
          "nothing is gated on them."
    ],
    regions: [
      field: :region,
      type_doc: "`nil` or a list of region slugs",
      doc:
        "only droplets in one of these regions (`[\"nyc3\", \"sfo3\"]`), at most " <>
          "#{@max_values}; `nil`: any region."
    ],
    vpc: [
      field: :vpc_uuid,
      type_doc: "`nil`, `:self` or a VPC's UUID",
      doc:
        "only droplets in this VPC, given by its UUID, or `:self`: this node's own VPC " <>
          "(that of the listed droplet that has this node's address). Needs the token's " <>
          "`vpc:read` scope: without it droplets come without `vpc_uuid`, and the poll " <>
          "fails with `vpc_unknown` rather than guess. `nil`: any VPC."
    ]
  ]

  # Why a droplet is outside a filter: the option, the droplet's value.
  @type outside :: {atom(), term()}

  # Every filter is optional (`nil`: not set) and validated by validate/2.
  def schema do
    for {option, spec} <- @filters do
      {option,
       [
         type: {:custom, __MODULE__, :validate, [option]},
         default: nil,
         type_doc: spec[:type_doc],
         doc: spec[:doc]
       ]}
    end
  end

  def options, do: Keyword.keys(@filters)

  def fields,
    do: for({_option, spec} <- @filters, is_list(spec[:field]), uniq: true, do: spec[:field])

  @doc """
  The filters a config sets, `{option, value}` sorted by option.

      iex> LibclusterDroplet.Filters.set(%{regions: ["nyc3"], vpc: nil})
      [regions: ["nyc3"]]
  """
  def set(config) do
    for {option, _spec} <- @filters,
        value = Map.get(config, option),
        value != nil,
        do: {option, normalize(option, value)}
  end

  # A value withheld by Config (it held the token) is kept as the atom: it
  # hashes apart from the value it replaced, and shows nothing of it.
  defp normalize(_option, :withheld), do: :withheld
  defp normalize(:regions, regions), do: Enum.sort(regions)
  defp normalize(_option, value), do: value

  @doc """
  Each droplet with the filters it is outside of (`[]`: kept), in listing
  order. `self`, this node, finds `vpc: :self` by its address (`nil`: not
  applied). A filter that cannot be applied fails the whole: guessing
  would cluster too much or nothing.

      iex> alias LibclusterDroplet.Filters
      iex> droplets = [
      ...>   %{name: "a", address: "10.0.0.1", region: "nyc3", vpc_uuid: "v1"},
      ...>   %{name: "b", address: "10.0.0.2", region: "sfo3", vpc_uuid: "v1"},
      ...>   %{name: "c", address: "10.0.0.3", region: "nyc3", vpc_uuid: "v2"}
      ...> ]
      iex> {:ok, split} = Filters.apply(droplets, %{regions: ["nyc3"], vpc: :self}, :"app@10.0.0.1")
      iex> Enum.map(split, fn {d, outside} -> {d.name, outside} end)
      [{"a", []}, {"b", [regions: "sfo3"]}, {"c", [vpc: "v2"]}]
      iex> Filters.apply(droplets, %{regions: nil, vpc: :self}, :"app@10.0.0.9")
      {:error, {:vpc_unknown, "this node's droplet (address 10.0.0.9) is not among the listed droplets, so its VPC is unknown"}}
  """
  @spec apply([map()], map(), node() | nil) ::
          {:ok, [{map(), [outside()]}]} | {:error, {atom(), String.t()}}
  def apply(droplets, config, self) do
    with {:ok, filters} <- resolve_all(set(config), droplets, self),
         do: {:ok, Enum.map(droplets, &{&1, outside(&1, filters)})}
  end

  # The filters set, resolved against the listing; those that do not apply dropped.
  defp resolve_all([], _droplets, _self), do: {:ok, []}

  defp resolve_all([{option, value} | rest], droplets, self) do
    with {:ok, value} <- resolve(option, value, droplets, self),
         {:ok, resolved} <- resolve_all(rest, droplets, self),
         do: {:ok, if(value == nil, do: resolved, else: [{option, value} | resolved])}
  end

  defp outside(droplet, filters) do
    for {option, value} <- filters,
        judged?(droplet, option),
        outside?(option, value, field_value(droplet, option)),
        do: {option, field_value(droplet, option)}
  end

  # A pool member whose droplet was not listed has no droplet fields to
  # judge: only the pool's filters apply to it, and its status (not
  # listed) keeps it out of the cluster anyway.
  defp judged?(droplet, option),
    do: @filters[option][:field] == :pool or not LibclusterDroplet.Listing.unlisted?(droplet)

  defp field_value(droplet, option) do
    case @filters[option][:field] do
      path when is_list(path) -> get_in(droplet, [:fields, Enum.join(path, ".")])
      key -> Map.get(droplet, key)
    end
  end

  # A filter's value against a listing: `{:ok, nil}` when it does not apply.
  # A withheld value matches nothing (outside?/3), whatever the listing.
  defp resolve(_option, :withheld, _droplets, _self), do: {:ok, :withheld}

  # Pool members that were not listed carry no vpc_uuid to miss.
  defp resolve(:vpc, vpc, droplets, self) do
    listed = Enum.reject(droplets, &LibclusterDroplet.Listing.unlisted?/1)

    case Enum.count(listed, &(not is_binary(&1[:vpc_uuid]))) do
      0 -> own_vpc(vpc, listed, self)
      n -> vpc_unknown("#{n} of the #{length(listed)} listed droplets came without vpc_uuid")
    end
  end

  defp resolve(_option, value, _droplets, _self), do: {:ok, value}

  defp own_vpc(:self, _droplets, nil), do: {:ok, nil}

  # This node's droplet is found by its address; two VPCs may hold the same
  # private range, so an address found in several VPCs names none.
  defp own_vpc(:self, droplets, self) do
    host = LibclusterDroplet.NodeName.host(self)

    case droplets |> Enum.filter(&(&1[:address] == host)) |> Enum.map(& &1.vpc_uuid) do
      [] ->
        vpc_unknown(
          "this node's droplet (address #{host}) is not among the listed droplets, so its VPC is unknown"
        )

      vpcs ->
        case Enum.uniq(vpcs) do
          [vpc] ->
            {:ok, String.downcase(vpc)}

          several ->
            vpc_unknown(
              "listed droplets in #{length(several)} different VPCs have this node's address #{host}"
            )
        end
    end
  end

  defp own_vpc(uuid, _droplets, _self), do: {:ok, uuid}

  defp vpc_unknown(detail), do: {:error, {:vpc_unknown, detail}}

  # Whether a droplet whose field holds `field` is outside the filter.
  defp outside?(:pool_health, _accepted, nil), do: false
  # The value set held the token and was withheld: no droplet can be shown
  # to match it, so none is kept (a guess would cluster too much).
  defp outside?(_option, :withheld, _field), do: true
  defp outside?(:autoscale_pool, _pool, member), do: member == nil or member.status != "active"
  defp outside?(:pool_health, accepted, member), do: member.health_status not in accepted
  defp outside?(:regions, regions, region), do: region not in regions
  defp outside?(:vpc, vpc, uuid), do: not is_binary(uuid) or String.downcase(uuid) != vpc

  @doc """
  Why a droplet is outside a filter, in words.

      iex> LibclusterDroplet.Filters.describe({:regions, "sfo3"})
      "region sfo3 is not among :regions"
  """
  @spec describe(outside()) :: String.t()
  def describe({:autoscale_pool, nil}), do: "not in the pool"

  def describe({:autoscale_pool, %{status: status}}),
    do: "pool member with status #{status}: only active members are selected"

  def describe({:pool_health, %{health_status: health}}),
    do: "pool member with health #{health || "(none)"}, not among :pool_health"

  def describe({:regions, nil}), do: "no region, and :regions is set"
  def describe({:regions, slug}), do: "region #{slug} is not among :regions"
  def describe({:vpc, nil}), do: "no VPC, and :vpc is set"
  def describe({:vpc, uuid}), do: "VPC #{uuid} is not the :vpc asked for"

  @doc """
  Whether `outside` has a value of the shape this filter's field gives
  (so describe/1 words it): a share from another node carries them, and
  is outside input.

      iex> LibclusterDroplet.Filters.describable?({:regions, "sfo3"})
      true
      iex> LibclusterDroplet.Filters.describable?({:regions, %{}})
      false
  """
  @spec describable?(term()) :: boolean()
  def describable?({:autoscale_pool, nil}), do: true
  def describable?({:autoscale_pool, %{status: status}}), do: is_binary(status)
  def describable?({:pool_health, %{health_status: h}}), do: is_binary(h) or is_nil(h)
  def describable?({option, value}) when option in [:regions, :vpc], do: text?(value)
  def describable?(_other), do: false

  defp text?(value), do: is_binary(value) or is_nil(value)

  # NimbleOptions' custom validator of each filter option. Messages name
  # the expected shape, never the value: it may be a token pasted in the
  # wrong place.
  def validate(nil, _option), do: {:ok, nil}

  def validate(:self, :vpc), do: {:ok, :self}

  # UUIDs are compared as the API writes them, in lower case; a VPC's name
  # given by mistake would match no droplet and is refused here.
  def validate(uuid, :vpc) when is_binary(uuid) do
    lower = String.downcase(uuid)
    if Regex.match?(@uuid, lower), do: {:ok, lower}, else: invalid(:vpc)
  end

  def validate([_ | _] = regions, :regions),
    do: with(:error <- strings(regions, @max_values, &slug?/1), do: invalid(:regions))

  def validate(pool, :autoscale_pool) when is_binary(pool) do
    if byte_size(pool) in 1..255 and String.printable?(pool) and pool == String.trim(pool),
      do: {:ok, pool},
      else: invalid(:autoscale_pool)
  end

  def validate([_ | _] = statuses, :pool_health) do
    with :error <- strings(statuses, 16, &(is_binary(&1) and byte_size(&1) in 1..64)),
         do: invalid(:pool_health)
  end

  def validate(_value, option), do: invalid(option)

  defp slug?(value), do: is_binary(value) and Regex.match?(@slug, value)

  # A proper list of at most `max` values passing `valid?`, without repeats;
  # walked by hand so that an improper list is refused, never a crash.
  @spec strings(term(), pos_integer(), (term() -> boolean())) :: {:ok, list()} | :error
  def strings(list, max, valid?), do: strings(list, max, valid?, [])

  defp strings([], _max, _valid?, [_ | _] = acc), do: {:ok, acc |> Enum.reverse() |> Enum.uniq()}
  defp strings([_ | _], 0, _valid?, _acc), do: :error

  defp strings([value | rest], max, valid?, acc),
    do: if(valid?.(value), do: strings(rest, max - 1, valid?, [value | acc]), else: :error)

  defp strings(_other, _max, _valid?, _acc), do: :error

  defp invalid(option),
    do: {:error, "expected #{@filters[option][:type_doc]} (value not shown)"}
end
