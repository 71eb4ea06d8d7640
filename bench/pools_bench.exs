# Autoscale pools: requests per poll for a 1,000-droplet account with a
# 50-member pool, with and without a template tag. Run with
# `make bench BENCH=pools`. The fake API counts each request by path.
Code.require_file("support/bench_helper.exs", __DIR__)

defmodule Bench.Pools do
  @moduledoc false
  alias Bench.Helper
  alias LibclusterDroplet.FakeAPI

  @token "dop_v1_pools_bench_token"
  @droplets 1_000
  @members 50

  def run do
    Helper.header("autoscale pools: requests per poll",
      account: "#{@droplets} droplets, #{@members} of them members of the pool",
      listing: "LibclusterDroplet.list_droplets(autoscale_pool: name), per_page 200",
      measure: "the fake API's request log, by path, for the first poll and a steady one"
    )

    rows = for tagged? <- [true, false], do: measure(tagged?)

    Helper.table(
      ["template tag", "poll", "pool lookups", "member pages", "droplet pages", "requests"],
      Enum.flat_map(rows, fn r ->
        for {poll, counts} <- [first: r.first, steady: r.steady] do
          [r.label, to_string(poll), counts.lookup, counts.members, counts.droplets, counts.total]
          |> Enum.map(&to_string/1)
        end
      end)
    )

    Helper.write_results("pools", %{rows: rows})
  end

  defp measure(tagged?) do
    tag = "pool-template"

    droplets =
      for i <- 1..@droplets do
        tags = if tagged? and i <= @members, do: [tag], else: ["other"]

        FakeAPI.droplet(
          id: i,
          name: "d#{i}",
          private_ip: "127.0.#{div(i, 250)}.#{rem(i, 250) + 2}",
          tags: tags
        )
      end

    {:ok, api} = FakeAPI.start_link(token: @token, droplets: droplets)
    template = if tagged?, do: [tag], else: []
    FakeAPI.create_pool(api, name: "web", tags: template, members: Enum.to_list(1..@members))
    opts = [token: @token, api_url: FakeAPI.url(api), autoscale_pool: "web"]

    # The first poll resolves the pool by name; a strategy then keeps it
    # (LibclusterDroplet.Pool) and passes it to every poll that follows.
    {:ok, first} = LibclusterDroplet.list_droplets(opts)
    first_counts = counts(api)
    true = first.pool.members == @members
    FakeAPI.reset_requests(api)
    {:ok, request} = LibclusterDroplet.list_request(opts, first.pool)
    {:ok, call} = LibclusterDroplet.start_list_droplets(request)
    {:ok, steady} = LibclusterDroplet.await_list(call, request.api_url, 60_000)
    true = length(Enum.filter(steady.droplets, & &1.pool)) == @members
    steady_counts = counts(api)
    FakeAPI.stop(api)

    %{
      label: if(tagged?, do: "yes (#{tag})", else: "none"),
      first: first_counts,
      steady: steady_counts
    }
  end

  defp counts(api) do
    by = Enum.frequencies_by(FakeAPI.requests(api), &kind/1)

    %{
      lookup: by[:lookup] || 0,
      members: by[:members] || 0,
      droplets: by[:droplets] || 0,
      total: Enum.sum(Map.values(by))
    }
  end

  defp kind(%{path: path}) do
    cond do
      String.ends_with?(path, "/members") -> :members
      String.starts_with?(path, "/v2/droplets/autoscale") -> :lookup
      true -> :droplets
    end
  end
end

Bench.Pools.run()
