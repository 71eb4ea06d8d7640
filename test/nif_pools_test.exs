defmodule LibclusterDroplet.NifPoolsTest do
  @moduledoc false
  # The NIF's listing of a Droplet Autoscale Pool against the fake API, over
  # real sockets: how the pool is found, what each poll costs in requests,
  # and the pool requests held to the listing's rules.
  use ExUnit.Case, async: true

  alias LibclusterDroplet.{Error, FakeAPI, Listing, Native, TokenPieces}

  @token "dop_v1_nif_pools_0123456789abcdef0123456789"

  setup do
    {:ok, api} = FakeAPI.start_link(token: @token)
    {:ok, api: api}
  end

  defp droplets(ids, tags) do
    for i <- ids,
        do: FakeAPI.droplet(id: i, name: "node-#{i}", tags: tags, private_ip: ip(i))
  end

  defp ip(i), do: "127.0.#{div(i, 250)}.#{rem(i, 250) + 2}"

  # The NIF's own answer, `{result, info}`, for the request `list_request/1`
  # builds, with `autoscale_pool` set to `pool`.
  defp list(api, pool, opts \\ []) do
    {:ok, request} =
      LibclusterDroplet.list_request([api_url: FakeAPI.url(api), token: @token] ++ opts)

    ref = make_ref()
    {:ok, handle, _} = Native.list_droplets(%{request | autoscale_pool: pool}, ref)
    assert_receive {:droplet_nif_list, ^ref, result, info}, 20_000
    # Referenced until the answer came: a collected handle cancels the call.
    :ok = Native.cancel(handle)
    {result, info}
  end

  defp by_name(name), do: %{id: nil, name: name, tags: nil}
  defp by_id(id), do: %{id: id, name: nil, tags: nil}

  defp paths(api), do: Enum.map(FakeAPI.requests(api), &{&1.path, &1.query})

  describe "resolution" do
    test "by name: the exact name's pool, its members, then its template's first tag", %{api: api} do
      FakeAPI.put_droplets(api, droplets(1..3, ["app"]) ++ droplets(4..4, ["other"]))
      FakeAPI.create_pool(api, name: "web-old", tags: ["old"])
      id = FakeAPI.create_pool(api, name: "web", tags: ["app", "more"], members: [1, 2])
      FakeAPI.put_member(api, id, 2, status: "provisioning", health_status: "unknown")

      assert {{:ok, %{pool: pool, droplets: listed}}, info} = list(api, by_name("web"))

      assert pool == %{
               id: id,
               name: "web",
               tags: ["app", "more"],
               members: [
                 %{droplet_id: 1, status: "active", health_status: "healthy"},
                 %{droplet_id: 2, status: "provisioning", health_status: "unknown"}
               ]
             }

      assert Enum.map(listed, & &1.id) == [1, 2, 3]

      members = "/v2/droplets/autoscale/#{id}/members"

      assert [
               {"/v2/droplets/autoscale", %{"name" => "web", "per_page" => "200"}},
               {^members, %{"per_page" => "200"}},
               {"/v2/droplets", %{"tag_name" => "app"}}
             ] = paths(api)

      assert %{requests: 3, pool_requests: 2} = info
    end

    test "by id: looked up for its name and tags; without a template tag every droplet page is listed",
         %{api: api} do
      FakeAPI.put_droplets(api, droplets(1..450, ["app"]))
      id = FakeAPI.create_pool(api, name: "untagged", members: [7])

      assert {{:ok, %{pool: pool, droplets: listed, total: 450}}, info} = list(api, by_id(id))
      assert %{id: ^id, name: "untagged", tags: [], members: [%{droplet_id: 7}]} = pool
      assert length(listed) == 450

      assert [
               {"/v2/droplets/autoscale/" <> lookup, _},
               {"/v2/droplets/autoscale/" <> _members, _} | droplet_pages
             ] = paths(api)

      assert lookup == id
      assert [{"/v2/droplets", q} | _] = droplet_pages
      refute Map.has_key?(q, "tag_name")
      # 1 lookup + 1 member page + 3 droplet pages of 200: each request counted.
      assert length(droplet_pages) == 3
      assert %{requests: 5, pool_requests: 2} = info
      assert info.requests == FakeAPI.request_count(api)
    end

    test "a pool known from before costs member pages and droplet pages only", %{api: api} do
      FakeAPI.put_droplets(api, droplets(1..2, ["app"]))
      id = FakeAPI.create_pool(api, name: "web", tags: ["app"], members: [1])
      known = %{id: id, name: "web", tags: ["app"]}

      for poll <- 1..3 do
        FakeAPI.reset_requests(api)
        assert {{:ok, %{pool: %{name: "web", tags: ["app"]}}}, info} = list(api, known)
        assert %{requests: 2, pool_requests: 1} = info, "poll #{poll}"
        assert FakeAPI.request_count(api) == 2
      end

      # The listing the strategy reads joins the members to the droplets by id.
      {result, info} = list(api, known)
      assert {:ok, %Listing{pool: summary, droplets: [one, two]}} = Listing.from_nif(result, info)
      assert %{id: ^id, members: 1, active: 1} = summary
      assert %{id: 1, pool: %{status: "active"}} = one
      assert %{id: 2, pool: nil} = two
    end
  end

  describe "members" do
    test "are paged 200 at a time, every page read, in order", %{api: api} do
      id = FakeAPI.create_pool(api, name: "big", tags: ["app"], members: Enum.to_list(1..450))

      assert {{:ok, %{pool: %{members: members}}}, info} = list(api, by_id(id))
      assert Enum.map(members, & &1.droplet_id) == Enum.to_list(1..450)

      member_pages =
        for %{path: path, query: q} <- FakeAPI.requests(api),
            String.ends_with?(path, "/members"),
            do: q["page"] || "1"

      assert Enum.sort(member_pages) == ["1", "2", "3"]
      # Lookup, 3 member pages, 1 droplet page.
      assert %{requests: 5, pool_requests: 4} = info
    end

    test "are held to :max_droplets", %{api: api} do
      id = FakeAPI.create_pool(api, name: "big", tags: ["app"], members: Enum.to_list(1..30))
      assert {{:error, {:too_many_droplets, 20}}, _} = list(api, by_id(id), max_droplets: 20)
    end

    test "a token piece echoed in a member's status or health_status is redacted", %{api: api} do
      id = FakeAPI.create_pool(api, name: "web", tags: ["app"], members: [1, 2])
      echo = fn at -> "x-" <> binary_part(@token, at, 14) <> "-y" end
      FakeAPI.put_member(api, id, 1, status: echo.(0))
      FakeAPI.put_member(api, id, 2, health_status: echo.(20))

      assert {{:ok, %{pool: %{members: [one, two]}}} = result, info} = list(api, by_id(id))
      assert one.status == "x-[REDACTED]-y"
      assert two.health_status == "x-[REDACTED]-y"
      TokenPieces.assert_no_piece({result, info}, @token)
    end
  end

  describe "failures" do
    test "a pool that is not there is :pool_not_found, by name, by id, or gone since", %{api: api} do
      FakeAPI.create_pool(api, name: "web-2")
      assert {{:error, :pool_not_found}, %{requests: 1}} = list(api, by_name("web"))

      id = FakeAPI.create_pool(api, name: "web", tags: ["app"])
      :ok = FakeAPI.delete_pool(api, id)
      assert {{:error, :pool_not_found}, %{requests: 1}} = list(api, by_id(id))
      known = %{id: id, name: "web", tags: ["app"]}
      assert {{:error, :pool_not_found}, %{requests: 1}} = list(api, known)

      assert Error.format(:pool_not_found) =~ "no autoscale pool has that name or id"
    end

    test "a 403 names the scope the token lacks, on any pool request", %{api: api} do
      id = FakeAPI.create_pool(api, name: "web", tags: ["app"], members: [1])
      missing = "You are missing the required scope: autoscale_pool:read"

      for path <- ["/v2/droplets/autoscale", "/v2/droplets/autoscale/#{id}/members"] do
        FakeAPI.inject(api, {:status, 403, missing}, path: path)
        assert {{:error, {:forbidden, "autoscale_pool:read"}}, _} = list(api, by_name("web"))
      end

      FakeAPI.inject(api, {:status, 403, missing}, path: "/v2/droplets/autoscale/#{id}")
      assert {{:error, {:forbidden, "autoscale_pool:read"}}, _} = list(api, by_id(id))
    end

    test "a 429 on a pool request is :rate_limited, nothing listed after it", %{api: api} do
      id = FakeAPI.create_pool(api, name: "web", tags: ["app"], members: [1])
      FakeAPI.inject(api, {:status, 429}, path: "/v2/droplets/autoscale/#{id}/members")
      assert {{:error, {:rate_limited, _}}, %{requests: 2}} = list(api, by_id(id))
      refute Enum.any?(FakeAPI.requests(api), &(&1.path == "/v2/droplets"))
    end

    test "a pool is never listed with tag_name or name", %{api: api} do
      assert {:ok, request} =
               LibclusterDroplet.list_request(
                 api_url: FakeAPI.url(api),
                 token: @token,
                 tag_name: "app"
               )

      invalid = [
        %{id: nil, name: nil, tags: nil},
        %{id: "x", name: nil, tags: []},
        %{id: nil, name: "web", tags: ["app"]},
        %{id: 5, name: nil, tags: nil},
        %{id: "x", name: "web", tags: List.duplicate("t", 65)},
        %{id: "x", name: "web", tags: ["a" | "b"]},
        "web"
      ]

      for pool <- invalid do
        assert {:error, {:invalid_request, "autoscale_pool" <> _}} =
                 Native.list_droplets(
                   %{request | autoscale_pool: pool, tag_name: nil},
                   make_ref()
                 )
      end

      assert {:error, {:invalid_request, "autoscale_pool cannot be set with tag_name or name"}} =
               Native.list_droplets(%{request | autoscale_pool: by_name("web")}, make_ref())

      assert FakeAPI.request_count(api) == 0
    end
  end
end
