defmodule LibclusterDroplet.Plan do
  @probe_strikes 3

  @moduledoc """
  Pure decisions that turn a view (an API listing or a leader's share) into
  the set of nodes this node wants connected.

    0. `filter/3`, on an API listing only: the droplets outside the
       client-side filters (`:regions`, `:vpc`) are set apart, each with
       why. A share is filtered already: its poller, under the same
       options (`Cluster.Strategy.Droplet.Config.fingerprint/1`), shares
       only the droplets it kept.
    1. `select/3`: each selected droplet's node name, `basename@address`;
       whether this node is among them; droplets whose name cannot be a
       node name.
    2. `decide/5`: with the health checks' results, the desired set.
       A node that is not yet managed needs one passing probe; a node
       already managed is dropped only after #{@probe_strikes} failed probes in a row,
       so one lost SYN or a full accept queue never costs a healthy node
       its connections. When this node must be listed to join and is not,
       the desired set is empty.
    3. `diff/2`: which managed nodes are no longer wanted.
  """

  defmodule Selection do
    @moduledoc "The node names a view selects (see `LibclusterDroplet.Plan.select/3`)."
    defstruct candidates: [], self_listed?: false, unusable: [], excluded: []

    @typedoc """
    `excluded`: the droplets `LibclusterDroplet.Plan.filter/3` set apart as
    outside the filters, with why (empty for a share).
    """
    @type t :: %__MODULE__{
            candidates: [{node(), String.t()}],
            self_listed?: boolean(),
            unusable: [{String.t(), String.t(), String.t(), :invalid_basename | :invalid_address}],
            excluded: [{map(), [LibclusterDroplet.Plan.outside()]}]
          }
  end

  @typedoc """
  Why a droplet is outside the filters: its region slug is not among
  `:regions`, or its `vpc_uuid` is not the VPC asked for.
  """
  @type outside :: {:region, String.t() | nil} | {:vpc, String.t()}

  @typedoc "The client-side filters: `:regions` and `:vpc` of the config."
  @type filters :: %{
          required(:regions) => [String.t()] | nil,
          required(:vpc) => :self | String.t() | nil,
          optional(atom()) => term()
        }

  @typedoc "A health check's verdict on one node."
  @type health :: :ok | {:error, term()}

  @typedoc "Consecutive failed probes of managed nodes."
  @type strikes :: %{node() => pos_integer()}

  @doc "How many failed probes in a row drop a node that is already managed."
  @spec probe_strikes() :: pos_integer()
  def probe_strikes, do: @probe_strikes

  @doc """
  Sets apart the listed droplets outside the client-side filters, and
  returns `{:ok, kept, excluded}`, both in listing order, each excluded
  droplet with every reason it is outside (`t:outside/0`).

  `filters` holds `:regions` (`nil`, any region, or a list of slugs) and
  `:vpc`: `nil` (any), a VPC's UUID (lower case), or `:self`, this node's
  own VPC: the `vpc_uuid` of the listed droplet whose selected address is
  the host part of `self`, the droplet `select/3` finds this node on.

  `vpc_uuid` is only listed for a token with the `vpc:read` scope. With
  `:vpc` set, a droplet listed without it, or (with `:self`) this node's
  droplet missing from the listing or listed in several VPCs, gives
  `{:error, {:vpc_unknown, detail}}`: the filter cannot be applied, and
  guessing would cluster too much or nothing. The detail holds counts and
  this node's own address, never text from the API.

      iex> alias LibclusterDroplet.Plan
      iex> droplets = [
      ...>   %{name: "a", address: "10.0.0.1", region: "nyc3", vpc_uuid: "v1"},
      ...>   %{name: "b", address: "10.0.0.2", region: "sfo3", vpc_uuid: "v1"},
      ...>   %{name: "c", address: "10.0.0.3", region: "nyc3", vpc_uuid: "v2"}
      ...> ]
      iex> {:ok, kept, excluded} = Plan.filter(droplets, %{regions: ["nyc3"], vpc: :self}, :"app@10.0.0.1")
      iex> {Enum.map(kept, & &1.name), Enum.map(excluded, fn {d, why} -> {d.name, why} end)}
      {["a"], [{"b", [{:region, "sfo3"}]}, {"c", [{:vpc, "v2"}]}]}
      iex> Plan.filter(droplets, %{regions: nil, vpc: :self}, :"app@10.0.0.9")
      {:error, {:vpc_unknown, "this node's droplet (address 10.0.0.9) is not among the listed droplets, so its VPC is unknown"}}
  """
  @spec filter([map()], filters(), node()) ::
          {:ok, kept :: [map()], excluded :: [{map(), [outside(), ...]}]}
          | {:error, {:vpc_unknown, String.t()}}
  def filter(droplets, %{regions: nil, vpc: nil}, _self), do: {:ok, droplets, []}

  def filter(droplets, %{regions: regions, vpc: vpc}, self) do
    with {:ok, vpc} <- wanted_vpc(droplets, vpc, self) do
      {kept, excluded} =
        Enum.reduce(droplets, {[], []}, fn droplet, {kept, excluded} ->
          case outside(droplet, regions, vpc) do
            [] -> {[droplet | kept], excluded}
            reasons -> {kept, [{droplet, reasons} | excluded]}
          end
        end)

      {:ok, Enum.reverse(kept), Enum.reverse(excluded)}
    end
  end

  defp wanted_vpc(_droplets, nil, _self), do: {:ok, nil}

  defp wanted_vpc(droplets, vpc, self) do
    case Enum.count(droplets, &(vpc_of(&1) == nil)) do
      0 ->
        own_vpc(droplets, vpc, self)

      missing ->
        {:error,
         {:vpc_unknown,
          "#{missing} of the #{length(droplets)} listed droplets came without vpc_uuid"}}
    end
  end

  defp own_vpc(_droplets, uuid, _self) when is_binary(uuid), do: {:ok, uuid}

  # This node's droplet is found by its address, as select/3 finds this
  # node; two VPCs may hold the same private range, so an address found in
  # more than one VPC names none.
  defp own_vpc(droplets, :self, self) do
    host = host(self)

    case droplets |> Enum.filter(&(Map.get(&1, :address) == host)) |> Enum.map(&vpc_of/1) do
      [] ->
        {:error,
         {:vpc_unknown,
          "this node's droplet (address #{host}) is not among the listed droplets, so its VPC is unknown"}}

      vpcs ->
        case Enum.uniq(vpcs) do
          [vpc] ->
            {:ok, vpc}

          several ->
            {:error,
             {:vpc_unknown,
              "listed droplets in #{length(several)} different VPCs have this node's address #{host}"}}
        end
    end
  end

  defp host(self) do
    case self |> Atom.to_string() |> String.split("@", parts: 2) do
      [_name, host] -> host
      [_no_host] -> ""
    end
  end

  # UUIDs compared in lower case, as the config keeps them.
  defp vpc_of(%{vpc_uuid: uuid}) when is_binary(uuid), do: String.downcase(uuid)
  defp vpc_of(_droplet), do: nil

  defp outside(droplet, regions, vpc) do
    region = Map.get(droplet, :region)
    droplet_vpc = vpc_of(droplet)

    Enum.concat(
      if(regions != nil and region not in regions, do: [{:region, region}], else: []),
      if(vpc != nil and droplet_vpc != vpc, do: [{:vpc, droplet_vpc}], else: [])
    )
  end

  @doc """
  The candidates of a view: `{node, address}` for every droplet with an
  address, except this node (`self`), deduplicated by node name, in view
  order. `droplets` are maps with `:name` and `:address` (a listing) or
  `{name, address}` pairs (a share); droplets without an address were not
  selected (not active, or no address of the chosen kind).

      iex> alias LibclusterDroplet.Plan
      iex> s = Plan.select([{"web-1", "10.0.0.2"}, {"web-2", "10.0.0.3"}], "app", :"app@10.0.0.2")
      iex> {s.candidates, s.self_listed?}
      {[{:"app@10.0.0.3", "10.0.0.3"}], true}
  """
  @spec select([map() | {String.t(), String.t() | nil}], String.t() | nil, node()) ::
          Selection.t()
  def select(droplets, basename, self) do
    {candidates, self_listed?, unusable} =
      Enum.reduce(droplets, {[], false, []}, fn droplet, {acc, listed?, bad} ->
        case name_and_address(droplet) do
          {name, address} when is_binary(name) and is_binary(address) ->
            base = basename || name

            case LibclusterDroplet.NodeName.build(base, address) do
              {:ok, ^self} -> {acc, true, bad}
              {:ok, node} -> {[{node, address} | acc], listed?, bad}
              {:error, reason} -> {acc, listed?, [{name, base, address, reason} | bad]}
            end

          _not_selected ->
            {acc, listed?, bad}
        end
      end)

    %Selection{
      candidates: candidates |> Enum.reverse() |> Enum.uniq_by(&elem(&1, 0)),
      self_listed?: self_listed?,
      unusable: Enum.reverse(unusable)
    }
  end

  defp name_and_address(%{name: name, address: address}), do: {name, address}
  defp name_and_address({name, address}), do: {name, address}
  defp name_and_address(_), do: nil

  @doc "Why a droplet's name and address make no node name, in words."
  @spec describe_unusable(:invalid_basename | :invalid_address, String.t(), String.t()) ::
          String.t()
  def describe_unusable(:invalid_basename, basename, _address) do
    "#{inspect(basename)} cannot be the name part of a node name (only ASCII letters, digits, '_' and '-'); " <>
      "set :node_basename"
  end

  def describe_unusable(:invalid_address, _basename, address),
    do: "#{inspect(address)} is not an IP address"

  @doc """
  The desired set and the new strike counts.

  `health` is `:unchecked` (no health check configured: every candidate is
  wanted) or a map from node to its probe's verdict. `managed` is the set
  this node manages now. With `require_listed?` and `self_listed?` false
  the desired set is empty: a node joins only a cluster whose selection
  includes it.

      iex> alias LibclusterDroplet.Plan
      iex> s = %Plan.Selection{candidates: [{:"a@h", "10.0.0.2"}, {:"b@h", "10.0.0.3"}], self_listed?: true}
      iex> health = %{:"a@h" => {:error, :timeout}, :"b@h" => {:error, :timeout}}
      iex> {desired, strikes} = Plan.decide(s, health, MapSet.new([:"a@h"]), %{}, true)
      iex> {MapSet.to_list(desired), strikes}
      {[:"a@h"], %{:"a@h" => 1}}
  """
  @spec decide(
          Selection.t(),
          :unchecked | %{node() => health()},
          MapSet.t(node()),
          strikes(),
          boolean()
        ) :: {MapSet.t(node()), strikes()}
  def decide(
        %Selection{self_listed?: false},
        _health,
        _managed,
        _strikes,
        true = _require_listed?
      ),
      do: {MapSet.new(), %{}}

  def decide(
        %Selection{candidates: candidates},
        :unchecked,
        _managed,
        _strikes,
        _require_listed?
      ),
      do: {MapSet.new(candidates, &elem(&1, 0)), %{}}

  def decide(%Selection{candidates: candidates}, health, managed, strikes, _require_listed?)
      when is_map(health) do
    Enum.reduce(candidates, {MapSet.new(), %{}}, fn {node, _address}, {desired, new_strikes} ->
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

  @doc """
  The managed nodes that are no longer desired.

      iex> LibclusterDroplet.Plan.diff(MapSet.new([:a, :b]), MapSet.new([:b, :c])) |> MapSet.to_list()
      [:a]
  """
  @spec diff(MapSet.t(node()), MapSet.t(node())) :: MapSet.t(node())
  def diff(managed, desired), do: MapSet.difference(managed, desired)
end
