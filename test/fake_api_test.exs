defmodule LibclusterDroplet.FakeAPITest do
  # What the fake API promises the other tests: DigitalOcean's shapes,
  # paging, filters, errors, rate limits and pools, and the faults it injects.
  use ExUnit.Case, async: true

  alias LibclusterDroplet.{FakeAPI, TestCluster}

  doctest LibclusterDroplet.FakeAPI.Droplet

  @example Path.expand("../../shared/digitalocean-api/list_droplets_all.json", __DIR__)

  defp start_api(opts \\ []),
    do:
      start_supervised!(
        Supervisor.child_spec({FakeAPI, opts}, id: make_ref(), restart: :temporary)
      )

  defp nodes(n, tags \\ fn _ -> [] end),
    do: for(i <- 1..n//1, do: FakeAPI.droplet(id: i, name: "node-#{i}", tags: tags.(i)))

  # GET through :httpc, which follows no redirect here; a JSON body decoded.
  defp get(url_or_api, path \\ "", opts \\ []) do
    url = if is_binary(url_or_api), do: url_or_api, else: FakeAPI.url(url_or_api) <> path
    token = Keyword.get(opts, :token, "test-token")
    headers = if token, do: [{~c"authorization", ~c"Bearer #{token}"}], else: []
    http = [timeout: Keyword.get(opts, :timeout, 10_000), autoredirect: false]

    case :httpc.request(:get, {~c"#{url}", headers}, http, body_format: :binary) do
      {:ok, {{_, status, _}, headers, body}} ->
        headers = Map.new(headers, fn {k, v} -> {"#{k}", "#{v}"} end)
        body = with {:ok, json} <- Jason.decode(body), do: json, else: (_ -> body)
        %{status: status, headers: headers, body: body}

      error ->
        error
    end
  end

  defp ids(%{body: %{"droplets" => droplets}}),
    do: Enum.map(droplets, &(&1["id"] || &1["droplet_id"]))

  # Raw bytes over one TCP connection: sends `data`, reads until the server
  # closes or `timeout` passes.
  defp raw(api, data, timeout \\ 10_000) do
    {:ok, sock} =
      :gen_tcp.connect({127, 0, 0, 1}, URI.parse(FakeAPI.url(api)).port, [:binary, active: false])

    :ok = :gen_tcp.send(sock, data)
    read_all(sock, "", timeout)
  end

  defp read_all(sock, acc, timeout) do
    case :gen_tcp.recv(sock, 0, timeout) do
      {:ok, data} -> read_all(sock, acc <> data, timeout)
      {:error, reason} -> {acc, reason}
    end
  end

  defp request(path, headers),
    do: Enum.join(["GET #{path} HTTP/1.1", "host: x" | headers], "\r\n") <> "\r\n\r\n"

  describe "droplets" do
    test "pages of per_page (default 20, at most 200) with absolute links and meta.total" do
      api = start_api(droplets: nodes(45))
      url = FakeAPI.url(api) <> "/v2/droplets"
      first = get(api, "/v2/droplets")
      assert ids(first) == Enum.to_list(1..20)
      assert first.body["meta"] == %{"total" => 45}
      assert first.headers["content-length"] == "#{byte_size(Jason.encode!(first.body))}"

      assert first.body["links"]["pages"] ==
               %{"next" => "#{url}?page=2&per_page=20", "last" => "#{url}?page=3&per_page=20"}

      third = get(first.body["links"]["pages"]["last"])
      assert ids(third) == Enum.to_list(41..45)

      assert third.body["links"]["pages"] ==
               %{"first" => "#{url}?page=1&per_page=20", "prev" => "#{url}?page=2&per_page=20"}

      assert ids(get(api, "/v2/droplets?per_page=1000")) == Enum.to_list(1..45)
      assert get(api, "/v2/droplets?per_page=1000").body["links"] == %{"pages" => %{}}
      past = get(api, "/v2/droplets?per_page=20&page=9")

      assert {past.body["droplets"], past.body["links"]["pages"]["prev"]} ==
               {[], "#{url}?page=3&per_page=20"}

      for q <- ["per_page=0", "per_page=x", "page=0", "page=1.5", "page="] do
        assert %{status: 400, body: %{"id" => "bad_request", "request_id" => _}} =
                 get(api, "/v2/droplets?" <> q),
               q
      end
    end

    test "tag_name, name (case-insensitive) and type=gpus, with DigitalOcean's combination rules" do
      gpu = FakeAPI.droplet(id: 99, name: "gpu", gpu: true, tags: ["web"])
      api = start_api(droplets: nodes(5, &if(&1 <= 3, do: ["web"], else: ["db"])) ++ [gpu])
      web = get(api, "/v2/droplets?tag_name=web&per_page=2")
      assert ids(web) == [1, 2]
      assert web.body["links"]["pages"]["next"] =~ "?page=2&per_page=2&tag_name=web"
      assert ids(get(web.body["links"]["pages"]["next"])) == [3]
      assert ids(get(api, "/v2/droplets?name=NODE-4")) == [4]
      assert ids(get(api, "/v2/droplets?name=node")) == []
      assert ids(get(api, "/v2/droplets")) == [1, 2, 3, 4, 5]
      assert ids(get(api, "/v2/droplets?type=gpus")) == [99]
      assert ids(get(api, "/v2/droplets?type=gpus&name=GPU")) == [99]
      assert %{status: 400} = get(api, "/v2/droplets?type=other")

      for q <- ["tag_name=web&name=node-1", "tag_name=web&type=droplets"] do
        assert %{status: 422, body: %{"id" => "unprocessable_entity"}} =
                 get(api, "/v2/droplets?" <> q)
      end
    end

    test "droplet/1 has every field of the spec's example, with its types; nil scopes leave fields out" do
      template = @example |> File.read!() |> Jason.decode!() |> Map.fetch!("droplets") |> hd()
      droplet = FakeAPI.droplet(id: 42, name: "web", public_ip: "127.1.0.42", ipv6: "::1")
      assert_same_shape(droplet, template, [])
      assert %{"gpu_info" => %{}} = FakeAPI.droplet(id: 1, name: "g", gpu: true)
      bare = FakeAPI.droplet(id: 1, name: "a", vpc_uuid: nil, tags: nil, private_ip: nil)
      refute Map.has_key?(bare, "vpc_uuid") or Map.has_key?(bare, "tags")
      assert bare["networks"] == %{"v4" => [], "v6" => []}
    end

    test "put, add, update, remove and read back; only loopback addresses" do
      api = start_api(droplets: nodes(2))
      :ok = FakeAPI.add_droplet(api, FakeAPI.droplet(id: 3, name: "three"))
      :ok = FakeAPI.add_droplet(api, FakeAPI.droplet(id: 1, name: "one again"))
      :ok = FakeAPI.update_droplet(api, 2, %{status: "off"})
      :ok = FakeAPI.update_droplet(api, 3, &Map.put(&1, "tags", ["new"]))
      assert {:error, :not_found} = FakeAPI.update_droplet(api, 9, %{})

      assert Enum.map(get(api, "/v2/droplets").body["droplets"], &{&1["name"], &1["status"]}) ==
               [{"one again", "active"}, {"node-2", "off"}, {"three", "active"}]

      assert ids(get(api, "/v2/droplets?tag_name=new")) == [3]
      :ok = FakeAPI.remove_droplet(api, 3)
      assert {:error, :not_found} = FakeAPI.remove_droplet(api, 3)
      assert Enum.map(FakeAPI.droplets(api), & &1["id"]) == [1, 2]

      example = @example |> File.read!() |> Jason.decode!() |> Map.fetch!("droplets")
      assert_raise ArgumentError, fn -> FakeAPI.put_droplets(api, example) end

      assert_raise ArgumentError, fn ->
        FakeAPI.droplet(id: 5, name: "a", public_ip: "8.8.8.8")
      end

      outside = %{"networks" => %{"v4" => [%{"ip_address" => "10.0.0.1"}]}}
      assert_raise ArgumentError, fn -> FakeAPI.update_droplet(api, 1, outside) end
      :ok = FakeAPI.put_droplets(api, nodes(1))
      assert ids(get(api, "/v2/droplets")) == [1]
    end
  end

  describe "pools" do
    test "a pool by id, with its template, config and count of active members" do
      api = start_api()
      members = [11, {12, status: "provisioning"}, {13, health_status: "unhealthy"}]
      id = FakeAPI.create_pool(api, name: "web-pool", tags: ["web"], members: members)

      assert %{status: 200, body: %{"autoscale_pool" => pool}} =
               get(api, "/v2/droplets/autoscale/#{id}")

      assert %{
               "id" => ^id,
               "name" => "web-pool",
               "status" => "active",
               "active_resources_count" => 2,
               "config" => %{"min_instances" => 1, "max_instances" => 5},
               "droplet_template" => %{"tags" => ["web"], "region" => "nyc3", "size" => _},
               "created_at" => _,
               "updated_at" => _
             } = pool

      assert id =~ ~r/\A[0-9a-f]{8}-([0-9a-f]{4}-){3}[0-9a-f]{12}\z/
      assert [pool] == Enum.map(FakeAPI.pools(api), &Jason.decode!(Jason.encode!(&1)))

      for path <- ["/v2/droplets/autoscale/nope", "/v2/droplets/autoscale/nope/members"] do
        assert %{status: 404, body: %{"id" => "not_found", "message" => _}} = get(api, path)
      end
    end

    test "members are paged like droplets and carry DigitalOcean's member fields" do
      api = start_api()
      id = FakeAPI.create_pool(api, name: "p", members: Enum.to_list(1..250))
      path = "/v2/droplets/autoscale/#{id}/members"
      first = get(api, path)
      assert ids(first) == Enum.to_list(1..20)
      assert first.body["meta"] == %{"total" => 250}

      assert first.body["links"]["pages"]["last"] ==
               "#{FakeAPI.url(api)}#{path}?page=13&per_page=20"

      assert ids(get(api, path <> "?per_page=1000")) == Enum.to_list(1..200)
      assert ids(get(api, path <> "?per_page=200&page=2")) == Enum.to_list(201..250)
      assert %{status: 400} = get(api, path <> "?per_page=0")

      assert [
               %{"droplet_id" => 1, "status" => "active", "health_status" => "healthy"} = member
               | _
             ] = first.body["droplets"]

      assert Enum.sort(Map.keys(member)) ==
               ~w(created_at current_utilization droplet_id health_status status unhealthy_reason updated_at)

      assert %{"cpu" => cpu, "memory" => memory} = member["current_utilization"]
      assert is_float(cpu) and is_float(memory)
    end

    test "pools are listed and paged, filtered by name" do
      api = start_api()
      ids = for name <- ["a", "b", "c"], do: FakeAPI.create_pool(api, name: name)
      page = get(api, "/v2/droplets/autoscale?per_page=2")
      assert Enum.map(page.body["autoscale_pools"], & &1["id"]) == Enum.take(ids, 2)
      assert page.body["meta"] == %{"total" => 3}
      assert page.body["links"]["pages"]["next"] =~ "/v2/droplets/autoscale?page=2&per_page=2"
      named = get(api, "/v2/droplets/autoscale?name=b")
      assert [%{"name" => "b", "active_resources_count" => 0}] = named.body["autoscale_pools"]
      assert get(api, "/v2/droplets/autoscale?name=B").body["autoscale_pools"] == []
    end

    test "members are set, added, changed and removed; pools renamed and deleted" do
      api = start_api()
      id = FakeAPI.create_pool(api, name: "old", id: "0d3db13e-a604-4944-9827-7ec2642d32ac")
      members = "/v2/droplets/autoscale/#{id}/members"
      :ok = FakeAPI.put_members(api, id, [1, {2, %{status: "provisioning"}}])
      :ok = FakeAPI.put_member(api, id, 2, status: "active", health_status: "unhealthy")
      :ok = FakeAPI.put_member(api, id, 3)

      assert Enum.map(
               get(api, members).body["droplets"],
               &Map.take(&1, ["status", "health_status"])
             ) == [
               %{"status" => "active", "health_status" => "healthy"},
               %{"status" => "active", "health_status" => "unhealthy"},
               %{"status" => "active", "health_status" => "healthy"}
             ]

      assert ids(get(api, members)) == [1, 2, 3]

      assert [nil, "Droplet failed health check", nil] =
               Enum.map(FakeAPI.members(api, id), & &1["unhealthy_reason"])

      :ok = FakeAPI.remove_member(api, id, 1)
      assert {:error, :not_found} = FakeAPI.remove_member(api, id, 1)
      assert ids(get(api, members)) == [2, 3]

      :ok = FakeAPI.update_pool(api, id, %{name: "new"})

      assert [%{"id" => ^id}] =
               get(api, "/v2/droplets/autoscale?name=new").body["autoscale_pools"]

      assert get(api, "/v2/droplets/autoscale?name=old").body["autoscale_pools"] == []

      :ok = FakeAPI.delete_pool(api, id)
      assert %{status: 404} = get(api, members)
      assert %{status: 404} = get(api, "/v2/droplets/autoscale/#{id}")

      for call <- [
            &FakeAPI.put_members(&1, id, []),
            &FakeAPI.put_member(&1, id, 1),
            &FakeAPI.delete_pool(&1, id)
          ],
          do: assert({:error, :not_found} = call.(api))

      assert_raise ArgumentError, fn -> FakeAPI.create_pool(api, name: "x", members: ["1"]) end
    end
  end

  describe "authentication, routes and the connection" do
    test "a missing or wrong token is a 401 and uncounted; other paths are 404s" do
      api = start_api(droplets: nodes(1))

      for token <- [nil, "nope"] do
        assert %{
                 status: 401,
                 body: %{"id" => "unauthorized", "message" => "Unable to authenticate you."}
               } = resp = get(api, "/v2/droplets", token: token)

        assert resp.headers["ratelimit-remaining"] == "5000"
      end

      assert get(api, "/v2/droplets").headers["ratelimit-remaining"] == "4999"
      # A 404 counts, as every request the API answered does.
      assert %{status: 404, body: %{"id" => "not_found"}} = not_found = get(api, "/v2/account")
      assert not_found.headers["ratelimit-remaining"] == "4998"
    end

    test "kept alive, answered in order, Connection: close honoured; a malformed request is a 400" do
      api = start_api(droplets: nodes(1))
      first = request("/v2/droplets", ["AUTHORIZATION: bearer test-token"])
      second = request("/v2/nope", ["Authorization: Bearer test-token", "Connection: close"])
      {data, :closed} = raw(api, first <> second)

      assert [_, "200 OK\r\n" <> one, "404 Not Found\r\n" <> two] =
               String.split(data, "HTTP/1.1 ")

      assert one =~ "connection: keep-alive\r\n"
      assert two =~ "connection: close\r\n"
      assert {"HTTP/1.1 400 " <> _, :closed} = raw(api, "NONSENSE\r\n\r\n")
      assert FakeAPI.request_count(api) == 2
    end

    test "an idle connection is closed after keep_alive_timeout" do
      api = start_api(keep_alive_timeout: 100)
      # The default keeps it a minute: the read would time out instead.
      assert {"", :closed} = raw(api, "", 30_000)
    end

    test "stopped, it closes every connection and frees its port" do
      api = start_api(droplets: nodes(1))
      port = URI.parse(FakeAPI.url(api)).port
      {:ok, sock} = :gen_tcp.connect({127, 0, 0, 1}, port, [:binary, active: false])
      :ok = :gen_tcp.send(sock, request("/v2/droplets", ["Authorization: Bearer test-token"]))
      assert {:ok, "HTTP/1.1 200 OK" <> _} = :gen_tcp.recv(sock, 0, 10_000)
      :ok = FakeAPI.stop(api)
      assert {_, :closed} = read_all(sock, "", 30_000)
      {:ok, again} = FakeAPI.start_link(port: port)
      assert FakeAPI.url(again) == "http://127.0.0.1:#{port}"
    end

    test "HTTPS with the CA of ca_file/1" do
      assert FakeAPI.ca_file(start_api()) == nil
      api = start_api(tls: true, droplets: nodes(1))
      assert "https://127.0.0.1:" <> _ = FakeAPI.url(api)

      ssl = [
        verify: :verify_peer,
        cacertfile: ~c"#{FakeAPI.ca_file(api)}",
        server_name_indication: ~c"localhost"
      ]

      url = ~c"#{FakeAPI.url(api)}/v2/droplets"
      # Each on a connection of its own: httpc would keep the first.
      auth = [{~c"authorization", ~c"Bearer test-token"}, {~c"connection", ~c"close"}]
      assert {:ok, {{_, 200, _}, _, _}} = :httpc.request(:get, {url, auth}, [ssl: ssl], [])
      no_ca = Keyword.delete(ssl, :cacertfile) ++ [cacerts: :public_key.cacerts_get()]
      assert {:error, _} = :httpc.request(:get, {url, auth}, [ssl: no_ca], [])
    end
  end

  describe "rate limits" do
    test "over the burst: a 429 whose retry-after is when the oldest request leaves the window" do
      api = start_api(droplets: nodes(1), rate_limit: [per_minute: 2, minute_ms: 60_000])

      assert Enum.map(1..2, fn _ -> get(api, "/v2/droplets").headers["ratelimit-remaining"] end) ==
               ["4999", "4998"]

      limited = get(api, "/v2/droplets")

      assert %{
               status: 429,
               body: %{"id" => "too_many_requests", "message" => "API Rate limit exceeded."}
             } = limited

      assert limited.headers["ratelimit-remaining"] == "4998"
      [oldest, _, refused] = FakeAPI.requests(api)

      assert limited.headers["retry-after"] ==
               "#{div(oldest.at_ms + 60_000 - refused.at_ms + 999, 1000)}"

      # Refused requests are not counted: the next 200 comes once the oldest left.
      :ok = FakeAPI.set_rate_limit(api, minute_ms: 300)
      Enum.each(1..2, fn _ -> get(api, "/v2/droplets") end)
      TestCluster.await(fn -> get(api, "/v2/droplets").status == 200 end)
      assert List.last(FakeAPI.requests(api)).headers["ratelimit-remaining"] == "4997"
      counted = api |> FakeAPI.requests() |> Enum.drop(3) |> Enum.filter(&(&1.status == 200))
      assert [a, _, c] = counted
      assert c.at_ms - a.at_ms >= 300
    end

    test "over the hour: a 429 with remaining 0, no retry-after, and the reset of the oldest request" do
      api = start_api(droplets: nodes(1), rate_limit: [per_hour: 2, hour_ms: 60_000])
      assert get(api, "/v2/droplets").headers["ratelimit-remaining"] == "1"
      # Over a second apart, so the oldest request's expiry and the newest's
      # are different whole seconds.
      Process.sleep(1_100)
      assert get(api, "/v2/droplets").headers["ratelimit-remaining"] == "0"
      limited = get(api, "/v2/droplets")
      assert {limited.status, limited.headers["ratelimit-remaining"]} == {429, "0"}
      refute Map.has_key?(limited.headers, "retry-after")

      # Each reset is when the first request leaves the hour, in the Unix
      # time of the answer: its unix_ms less the time since the first.
      [oldest | _] = log = FakeAPI.requests(api)

      for r <- log,
          do:
            assert(
              r.headers["ratelimit-reset"] ==
                "#{div(r.unix_ms - r.at_ms + oldest.at_ms + 60_999, 1000)}"
            )

      :ok = FakeAPI.set_rate_limit(api, per_hour: 10)
      ok = get(api, "/v2/droplets")

      assert {ok.status, ok.headers["ratelimit-limit"], ok.headers["ratelimit-remaining"]} ==
               {200, "10", "9"}

      assert_raise ArgumentError, fn -> FakeAPI.set_rate_limit(api, hour_ms: 0) end
      assert_raise ArgumentError, fn -> FakeAPI.start_link(rate_limit: [per_minute: -1]) end
    end
  end

  describe "faults" do
    test "statuses with DigitalOcean error bodies; a 429 with retry-after; a 403 naming a scope" do
      api = start_api(droplets: nodes(3))
      scope = "You are missing the required scope: droplet:read"
      FakeAPI.inject(api, {:status, 503})
      FakeAPI.inject(api, {:status, 429})
      FakeAPI.inject(api, {:status, 403, scope})

      assert %{status: 503, body: %{"id" => "service_unavailable", "request_id" => _}} =
               get(api, "/v2/droplets")

      assert %{status: 429, headers: %{"retry-after" => "1"}} = get(api, "/v2/droplets")

      assert %{status: 403, body: %{"id" => "forbidden", "message" => ^scope}} =
               get(api, "/v2/droplets")

      assert %{status: 200} = get(api, "/v2/droplets")
    end

    test "json, raw, edit (with the request's own URL) and redirect replace the answer" do
      api = start_api(droplets: nodes(3))
      FakeAPI.inject(api, {:json, %{"droplets" => "none"}})
      FakeAPI.inject(api, {:raw, ["<html>", "</html>"]})
      FakeAPI.inject(api, {:edit, &Map.put(&1, "droplets", [])})
      FakeAPI.inject(api, {:edit, &put_in(&1, ["links", "pages", "next"], &2)})
      FakeAPI.inject(api, {:redirect, "http://127.0.0.9:1/x"})
      assert get(api, "/v2/droplets").body == %{"droplets" => "none"}
      assert get(api, "/v2/droplets").body == "<html></html>"
      assert %{"droplets" => [], "meta" => %{"total" => 3}} = get(api, "/v2/droplets").body
      url = FakeAPI.url(api) <> "/v2/droplets?per_page=1"
      assert get(url).body["links"]["pages"]["next"] == url

      assert %{status: 302, headers: %{"location" => "http://127.0.0.9:1/x"}} =
               get(api, "/v2/droplets")
    end

    test "a slow answer is late on its own connection only" do
      api = start_api(droplets: nodes(1))
      FakeAPI.inject(api, {:slow, 60_000})
      assert {:error, :timeout} = get(api, "/v2/droplets", timeout: 500)
      assert %{status: 200} = get(api, "/v2/droplets")
    end

    test "times, page, path and order decide which requests are hit" do
      api = start_api(droplets: nodes(3))
      pool = FakeAPI.create_pool(api, name: "p")
      FakeAPI.inject(api, {:status, 500}, page: 2, times: 2)

      FakeAPI.inject(api, {:status, 403, "missing scope: x:read"},
        path: "/v2/droplets/autoscale/#{pool}/members"
      )

      FakeAPI.inject(api, {:status, 502}, path: ~r{^/v2/droplets/autoscale})
      FakeAPI.inject(api, {:status, 503}, times: :infinity)
      status = &get(api, &1).status
      assert status.("/v2/droplets?page=2&per_page=1") == 500
      assert status.("/v2/droplets/autoscale/#{pool}/members") == 403
      assert status.("/v2/droplets/autoscale/#{pool}/members") == 502
      assert status.("/v2/droplets/autoscale/#{pool}/members") == 200
      assert Enum.map(1..3, fn _ -> status.("/v2/droplets") end) == [503, 503, 503]
      assert status.("/v2/droplets?page=2&per_page=1") == 500
      :ok = FakeAPI.clear_faults(api)
      assert status.("/v2/droplets") == 200
      FakeAPI.inject(api, {:status, 500}, path: :any)
      assert status.("/v2/droplets/autoscale") == 500

      for bad <- [:explode, {:status, 200}, {:edit, fn -> 1 end}] do
        assert_raise ArgumentError, fn -> FakeAPI.inject(api, bad) end
      end

      assert_raise ArgumentError, fn -> FakeAPI.inject(api, {:slow, 1}, times: 0) end
    end
  end

  test "the request log: every decided request in order, with its answer" do
    api = start_api(droplets: nodes(2))
    get(api, "/v2/droplets?per_page=1&tag_name=x%20y")
    get(api, "/v2/droplets", token: nil)
    FakeAPI.inject(api, {:slow, 0})
    get(api, "/v2/droplets")

    assert [
             %{
               method: "GET",
               path: "/v2/droplets",
               query: %{"per_page" => "1", "tag_name" => "x y"}
             } = a,
             %{status: 401, authorized: false, fault: nil},
             %{status: 200, authorized: true, fault: :slow} = c
           ] = FakeAPI.requests(api)

    assert %{
             status: 200,
             authorized: true,
             fault: nil,
             headers: %{"ratelimit-remaining" => "4999"}
           } = a

    assert c.at_ms >= a.at_ms and is_integer(c.unix_ms)
    assert FakeAPI.request_count(api) == 3
    :ok = FakeAPI.reset_requests(api)
    assert {FakeAPI.requests(api), FakeAPI.request_count(api)} == {[], 0}
    :ok = FakeAPI.set_token(api, "rotated")
    assert %{status: 401} = get(api, "/v2/droplets")
    assert %{status: 200} = get(api, "/v2/droplets", token: "rotated")
  end

  defp assert_same_shape(value, template, path) when is_map(template) do
    assert Enum.sort(Map.keys(value)) == Enum.sort(Map.keys(template)), "keys of #{inspect(path)}"
    for {k, v} <- template, do: assert_same_shape(value[k], v, path ++ [k])
  end

  defp assert_same_shape(value, [_ | _] = template, path),
    do: for(item <- value, do: assert_same_shape(item, hd(template), path ++ [0]))

  defp assert_same_shape(value, template, path),
    do: assert(type(value) == type(template), "type of #{inspect(path)}")

  defp type(v) when is_binary(v), do: :string
  defp type(v) when is_integer(v), do: :integer
  defp type(v) when is_float(v), do: :float
  defp type(v) when is_list(v), do: :array
  defp type(v) when is_boolean(v) or is_nil(v), do: v
end
