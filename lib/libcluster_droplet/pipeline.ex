defmodule LibclusterDroplet.Pipeline do
  @moduledoc false
  # The one place stages are decided: a listing (or a leader's share) to
  # one LibclusterDroplet.Verdict per droplet, through the client-side
  # filters, status, address, node name, duplicates and this node. The
  # strategy, its followers, explain and the mix task all call it.

  alias LibclusterDroplet.{Filters, NodeName, Verdict}

  @doc """
  The verdicts of a listing's droplets for the node `self` (`nil` on a
  machine outside the cluster) under `config` (`:node_basename` and the
  filters); `{:error, reason}` when a filter cannot be applied. Droplets go
  in listing order, and the first to give a node name keeps it.

      iex> alias LibclusterDroplet.Pipeline
      iex> droplets = [
      ...>   %{id: 1, name: "web-1", status: :active, address: "10.0.0.2"},
      ...>   %{id: 2, name: "web-2", status: :active, address: "10.0.0.3"},
      ...>   %{id: 3, name: "web-3", status: :off, address: nil},
      ...>   %{id: 4, name: "web-4", status: :active, address: "10.0.0.3"}
      ...> ]
      iex> {:ok, verdicts} = Pipeline.from_listing(droplets, %{node_basename: "app"}, :"app@10.0.0.2")
      iex> Enum.map(verdicts, &{&1.name, &1.stage})
      [{"web-1", :this_node}, {"web-2", :selected}, {"web-3", :not_active}, {"web-4", :duplicate}]
      iex> Pipeline.targets(verdicts)
      [{:"app@10.0.0.3", "10.0.0.3"}]
  """
  @spec from_listing([map()], map(), node() | nil) ::
          {:ok, [Verdict.t()]} | {:error, {atom(), String.t()}}
  def from_listing(droplets, config, self) do
    with {:ok, split} <- Filters.apply(droplets, config, self) do
      {verdicts, _seen} =
        Enum.map_reduce(split, MapSet.new(), fn {droplet, outside}, seen ->
          verdict = %Verdict{
            id: droplet[:id],
            name: droplet.name,
            status: droplet.status,
            address: droplet.address,
            stage: :selected
          }

          stage(verdict, outside, Map.get(config, :node_basename), self, seen)
        end)

      {:ok, verdicts}
    end
  end

  defp stage(verdict, [_ | _] = outside, _basename, _self, seen),
    do: {%{verdict | stage: :outside_filters, why: outside}, seen}

  defp stage(%Verdict{status: status} = verdict, [], _basename, _self, seen)
       when status != :active,
       do: {%{verdict | stage: :not_active}, seen}

  defp stage(%Verdict{address: nil} = verdict, [], _basename, _self, seen),
    do: {%{verdict | stage: :no_address}, seen}

  defp stage(verdict, [], basename, self, seen) do
    base = basename || verdict.name

    case NodeName.build(base, verdict.address) do
      {:error, reason} ->
        {%{verdict | stage: :unusable_name, why: {reason, base}}, seen}

      {:ok, node} ->
        verdict = %{verdict | node: node}

        cond do
          MapSet.member?(seen, node) -> {%{verdict | stage: :duplicate}, seen}
          node == self -> {%{verdict | stage: :this_node}, MapSet.put(seen, node)}
          true -> {verdict, MapSet.put(seen, node)}
        end
    end
  end

  # A leader's share as this node's verdicts: the leader's droplet is one to
  # connect to here, this node's is :this_node; every other stage depends
  # only on the listing and the options the fingerprint covers. A version 2
  # share carries the droplets its sender kept, named here with `basename`.
  @spec from_share(LibclusterDroplet.Share.t(), String.t() | nil, node()) :: [Verdict.t()]
  def from_share(%{verdicts: nil, droplets: droplets}, basename, self) do
    listed = for {name, address} <- droplets, do: %{name: name, status: :active, address: address}
    {:ok, verdicts} = from_listing(listed, %{node_basename: basename}, self)
    verdicts
  end

  def from_share(%{verdicts: verdicts}, _basename, self) do
    Enum.map(verdicts, fn
      %Verdict{stage: stage, node: ^self} = v when stage in [:selected, :this_node] ->
        %{v | stage: :this_node, health: nil}

      %Verdict{stage: stage} = v when stage in [:selected, :this_node] ->
        %{v | stage: :selected, health: nil}

      v ->
        v
    end)
  end

  # The nodes to connect to, with their addresses, in listing order.
  def targets(verdicts),
    do: for(%Verdict{stage: :selected} = v <- verdicts, do: {v.node, v.address})

  def self_listed?(verdicts), do: Enum.any?(verdicts, &(&1.stage == :this_node))

  # The node name this node's droplet gets, found by this node's address:
  # what a node not listed under its own name should be called.
  def own_name(verdicts, self) do
    host = NodeName.host(self)

    Enum.find_value(verdicts, fn v ->
      if v.address == host and v.node != nil and v.stage in [:selected, :this_node], do: v.node
    end)
  end

  # Each selected verdict's health: from the NIF's results (in target
  # order), or :unchecked (no check: every target passes).
  def with_results(verdicts, :unchecked), do: with_health(verdicts, :unchecked)

  def with_results(verdicts, results),
    do: with_health(verdicts, LibclusterDroplet.HealthCheck.results(targets(verdicts), results))

  def with_health(verdicts, health) do
    Enum.map(verdicts, fn
      %Verdict{stage: :selected} = v when health == :unchecked -> %{v | health: :ok}
      %Verdict{stage: :selected} = v -> %{v | health: Map.get(health, v.node)}
      v -> v
    end)
  end
end
