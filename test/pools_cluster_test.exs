defmodule LibclusterDroplet.PoolsClusterTest do
  @moduledoc false
  # Issue 18: a Droplet Autoscale Pool clustered by its own membership. Real
  # nodes on loopback, each running the strategy under libcluster's real
  # Cluster.Supervisor (../shared/vendor), against the fake API's pools.
  use ExUnit.Case, async: true

  alias LibclusterDroplet.{FakeAPI, TestCluster, TokenPieces}
  alias LibclusterDroplet.TestCluster.Remote

  @moduletag :cluster
  @moduletag timeout: 180_000

  @token "dop_v1_" <> String.duplicate("a7c3", 16)
  @interval 300
  @tag_name "web-template"

  setup do
    {:ok, api} = FakeAPI.start_link(token: @token)
    prefix = "p#{System.unique_integer([:positive])}"
    pool = "#{prefix}-pool"
    id = FakeAPI.create_pool(api, name: pool, tags: [@tag_name])
    {:ok, api: api, prefix: prefix, pool: pool, pool_id: id}
  end

  # A droplet carrying the template's tag, with a real node at its address
  # (`node?: false` for a droplet with no node), optionally a pool member.
  defp droplet(ctx, i, opts \\ []) do
    [address] = TestCluster.allocate_addresses(1)
    id = :erlang.phash2({ctx.prefix, i}, 1_000_000_000) + 1
    name = "#{ctx.prefix}-#{i}"

    FakeAPI.add_droplet(
      ctx.api,
      FakeAPI.droplet(id: id, name: name, private_ip: address, tags: [@tag_name])
    )

    if member = Keyword.get(opts, :member, status: "active"),
      do: :ok = FakeAPI.put_member(ctx.api, ctx.pool_id, id, member)

    node =
      if Keyword.get(opts, :node?, true) do
        node = TestCluster.start_node("app", address, log_level: :warning)
        on_exit(fn -> TestCluster.stop(node) end)
        TestCluster.call(node, Remote, :start_nodedown_recorder, [])
        node
      end

    %{id: id, address: address, node: node, name: :"app@#{address}"}
  end

  defp config(ctx, extra \\ []) do
    Keyword.merge(
      [
        token: @token,
        api_url: FakeAPI.url(ctx.api),
        autoscale_pool: ctx.pool,
        node_basename: "app",
        polling_interval: @interval,
        max_requests_per_minute: 60_000
      ],
      extra
    )
  end

  # libcluster's own Cluster.Supervisor, as an application starts it.
  defp start(droplets, config) do
    for %{node: node} <- droplets, node != nil do
      topologies = [droplets: [strategy: Cluster.Strategy.Droplet, config: config]]
      {:ok, sup} = TestCluster.call(node, Remote, :start_cluster_supervisor, [topologies])
      sup
    end
  end

  defp nodes(droplets), do: for(%{node: n} <- droplets, n != nil, do: n)

  defp await_mesh(droplets, timeout \\ 20_000),
    do: TestCluster.await(fn -> TestCluster.full_mesh?(nodes(droplets)) end, timeout)

  defp member_requests(api),
    do: api |> FakeAPI.requests() |> Enum.count(&String.ends_with?(&1.path, "/members"))

  test "active members mesh; a provisioning member and a tagged non-member never connect; " <>
         "a member turning active joins within 2 polls",
       ctx do
    active = for i <- 1..3, do: droplet(ctx, i)
    provisioning = droplet(ctx, 4, member: [status: "provisioning"])
    outsider = droplet(ctx, 5, member: nil)
    start(active ++ [provisioning, outsider], config(ctx))
    await_mesh(active)

    # Several polls later, still apart from the mesh.
    polls = member_requests(ctx.api)
    TestCluster.await(fn -> member_requests(ctx.api) >= polls + 4 end)

    for %{node: node} <- [provisioning, outsider] do
      assert TestCluster.connected(node) == []
    end

    # The provisioning member turns active: it joins within 2 polls.
    before = member_requests(ctx.api)
    :ok = FakeAPI.put_member(ctx.api, ctx.pool_id, provisioning.id, status: "active")
    await_mesh(active ++ [provisioning])
    assert member_requests(ctx.api) - before <= 2 * length(active ++ [provisioning])
    assert TestCluster.connected(outsider.node) == []
  end

  test "a member leaving the pool is disconnected everywhere, with zero healthy nodedowns", ctx do
    droplets = for i <- 1..4, do: droplet(ctx, i)
    start(droplets, config(ctx))
    await_mesh(droplets)
    [leaver | stay] = Enum.reverse(droplets)

    :ok = FakeAPI.remove_member(ctx.api, ctx.pool_id, leaver.id)
    TestCluster.await(fn -> TestCluster.connected(leaver.node) == [] end, 30_000)
    assert TestCluster.full_mesh?(nodes(stay))

    for %{node: node} <- stay do
      # Only the leaver: it may go down twice, when its own strategy
      # reconnects once before it polls and finds itself out of the pool.
      downs = TestCluster.call(node, Remote, :nodedowns, [])
      assert Enum.uniq(downs) == [leaver.node.node], "#{node.node} saw #{inspect(downs)} go down"
    end
  end

  test "pool_health drops an unhealthy member", ctx do
    droplets = for i <- 1..3, do: droplet(ctx, i)
    start(droplets, config(ctx, pool_health: ["healthy"]))
    await_mesh(droplets)
    [sick | healthy] = Enum.reverse(droplets)

    :ok = FakeAPI.put_member(ctx.api, ctx.pool_id, sick.id, health_status: "unhealthy")
    TestCluster.await(fn -> TestCluster.connected(sick.node) == [] end, 30_000)
    assert TestCluster.full_mesh?(nodes(healthy))

    # Every node's view drops it, the followers' too, however the poller
    # changed when the sick node left.
    report =
      TestCluster.await(fn ->
        {:ok, report} =
          TestCluster.call(hd(healthy).node, Cluster.Strategy.Droplet, :explain, [
            :droplets,
            [print: false]
          ])

        Enum.find(report.entries, &(&1.verdict.id == sick.id)).stage == :outside_filters and
          report
      end)

    assert Cluster.Strategy.Droplet.format_explanation(report) =~ "health unhealthy"
  end

  test "an unknown pool keeps membership and warns once, naming the pool", ctx do
    droplets = for i <- 1..3, do: droplet(ctx, i)
    start(droplets, config(ctx))
    await_mesh(droplets)
    for %{node: n} <- droplets, do: TestCluster.call(n, Remote, :capture_warnings, [])

    :ok = FakeAPI.delete_pool(ctx.api, ctx.pool_id)

    warnings = fn ->
      droplets
      |> Enum.flat_map(&TestCluster.call(&1.node, Remote, :warnings, []))
      |> Enum.filter(&(&1 =~ "pool_not_found"))
    end

    TestCluster.await(fn -> warnings.() != [] end, 30_000)
    # A dozen more requests, the pool still missing.
    polls = FakeAPI.request_count(ctx.api)
    TestCluster.await(fn -> FakeAPI.request_count(ctx.api) >= polls + 12 end, 30_000)
    assert TestCluster.full_mesh?(nodes(droplets))

    # One per node that polled: the leader, and any follower that took a
    # safety poll; never one per poll.
    assert length(warnings.()) <= length(droplets)
    assert Enum.all?(warnings.(), &(&1 =~ inspect(ctx.pool)))
  end

  test "requests per poll: member pages plus droplet pages, the pool lookup only when redone",
       ctx do
    # 250 members (2 member pages of 200), 250 tagged droplets (2 droplet pages).
    droplets = [droplet(ctx, 1)]

    for i <- 2..250 do
      %{id: id} = droplet(ctx, i, node?: false)
      id
    end

    start(droplets, config(ctx))
    TestCluster.await(fn -> member_requests(ctx.api) >= 2 end)
    FakeAPI.reset_requests(ctx.api)
    # The log split into polls, each starting at a first member page; the
    # first and last may be cut by the reset and by now.
    polls = fn ->
      ctx.api
      |> FakeAPI.requests()
      |> Enum.drop_while(&(not poll_start?(&1)))
      |> Enum.chunk_while([], &poll_chunk/2, &{:cont, Enum.reverse(&1), []})
    end

    complete = TestCluster.await(fn -> (p = polls.()) |> length() >= 4 && Enum.drop(p, -1) end)

    # Three polls or more, each 2 member pages and 2 droplet pages; no lookup.
    for poll <- complete do
      assert Enum.frequencies_by(poll, &kind/1) == %{members: 2, droplets: 2}
      assert Enum.all?(poll, &(&1.query["tag_name"] == @tag_name or kind(&1) != :droplets))
    end
  end

  defp poll_start?(request), do: kind(request) == :members and request.query["page"] in [nil, "1"]

  defp poll_chunk(request, acc) do
    if poll_start?(request) and acc != [],
      do: {:cont, Enum.reverse(acc), [request]},
      else: {:cont, [request | acc]}
  end

  test "no 12-character piece of the token appears anywhere", ctx do
    droplets = for i <- 1..2, do: droplet(ctx, i)
    piece = binary_part(@token, 10, 14)
    # The API echoes a piece of the token in a member's health and status.
    :ok = FakeAPI.put_member(ctx.api, ctx.pool_id, hd(droplets).id, health_status: "x" <> piece)
    node = List.last(droplets).node
    TestCluster.call(node, Logger, :configure, [[level: :debug]])
    TestCluster.call(node, Application, :put_env, [:libcluster, :debug, true])
    TestCluster.call(node, Remote, :capture_warnings, [:debug])
    # The README's form: a literal token is in libcluster's child spec, which
    # SASL progress reports print (documented); {:system, _} keeps it out.
    var = "LIBCLUSTER_DROPLET_POOLS_TOKEN"
    for d <- droplets, do: TestCluster.call(d.node, System, :put_env, [var, @token])
    start(droplets, config(ctx, pool_health: ["healthy"], token: {:system, var}))

    TestCluster.await(fn ->
      Enum.any?(TestCluster.call(node, Remote, :warnings, []), &(&1 =~ "found 2 droplets"))
    end)

    {:ok, report} =
      TestCluster.call(node, Cluster.Strategy.Droplet, :explain, [:droplets, [print: false]])

    for output <- [
          Cluster.Strategy.Droplet.format_explanation(report),
          inspect(report, structs: false, limit: :infinity),
          Enum.join(TestCluster.call(node, Remote, :warnings, []), "\n")
        ] do
      TokenPieces.assert_no_piece(output, @token)
    end
  end

  defp kind(%{path: path}) do
    cond do
      String.ends_with?(path, "/members") -> :members
      String.starts_with?(path, "/v2/droplets/autoscale") -> :lookup
      true -> :droplets
    end
  end
end
