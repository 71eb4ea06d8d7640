defmodule LibclusterDroplet.FakeAPITest do
  # Every test starts its own server on its own port, so they can run at once.
  use ExUnit.Case, async: true

  alias LibclusterDroplet.{FakeAPI, TestCluster}
  alias LibclusterDroplet.FakeAPI.{JSON, TLS}

  doctest LibclusterDroplet.FakeAPI
  doctest LibclusterDroplet.FakeAPI.JSON

  @shared Path.expand("../../shared/digitalocean-api", __DIR__)
  @all_example Path.join(@shared, "list_droplets_all.json")
  @tagged_example Path.join(@shared, "list_droplets_tagged.json")

  setup_all do
    {:ok, _} = Application.ensure_all_started(:inets)
    {:ok, _} = Application.ensure_all_started(:ssl)
    :ok
  end

  # ------------------------------------------------------------------ helpers

  defp start_api(opts \\ []),
    do:
      start_supervised!(
        Supervisor.child_spec({FakeAPI, opts}, id: make_ref(), restart: :temporary)
      )

  defp nodes(n, fun \\ fn _ -> [] end) do
    for i <- 1..n//1, do: FakeAPI.droplet(id: i, name: "node-#{i}", tags: fun.(i))
  end

  defp auth(token \\ "test-token"),
    do: {~c"authorization", String.to_charlist("Bearer " <> token)}

  # GET through :httpc; redirects are not followed so the 302 fault shows.
  defp get(url, opts \\ []) do
    headers = Keyword.get(opts, :headers, [auth()])
    http_opts = [timeout: 5_000, connect_timeout: 2_000, autoredirect: false]
    http_opts = http_opts ++ Keyword.get(opts, :http, [])

    request = {String.to_charlist(url), headers}
    profile = Keyword.get(opts, :profile, :default)

    case :httpc.request(:get, request, http_opts, [body_format: :binary], profile) do
      {:ok, {{_, status, _}, headers, body}} ->
        headers = Map.new(headers, fn {k, v} -> {to_string(k), to_string(v)} end)
        {:ok, %{status: status, headers: headers, body: body}}

      {:error, reason} ->
        {:error, reason}
    end
  end

  defp get!(api, path, opts \\ []) do
    {:ok, resp} = get(FakeAPI.url(api) <> path, opts)
    resp
  end

  defp json(%{body: body}), do: JSON.decode!(body)

  defp ids(resp), do: resp |> json() |> Map.fetch!("droplets") |> Enum.map(& &1["id"])

  defp port(api), do: URI.parse(FakeAPI.url(api)).port

  # Raw HTTP over one TCP connection: sends `data`, reads until the server
  # closes, returns {bytes read, how the read ended}.
  defp raw(api, data, ip \\ {127, 0, 0, 1}) do
    family = if tuple_size(ip) == 8, do: [:inet6], else: []
    opts = family ++ [:binary, active: false, show_econnreset: true]
    {:ok, sock} = :gen_tcp.connect(ip, port(api), opts)

    :ok = :gen_tcp.send(sock, data)
    read_all(sock, "")
  end

  defp read_all(sock, acc) do
    case :gen_tcp.recv(sock, 0, 5_000) do
      {:ok, data} -> read_all(sock, acc <> data)
      {:error, reason} -> {acc, reason}
    end
  end

  defp request(path, headers \\ ["authorization: Bearer test-token"]) do
    Enum.join(["GET #{path} HTTP/1.1", "host: 127.0.0.1" | headers], "\r\n") <> "\r\n\r\n"
  end

  # ---------------------------------------------------------------- pagination

  describe "pagination" do
    test "default per_page is 20, with absolute links and meta.total" do
      api = start_api(droplets: nodes(45))
      url = FakeAPI.url(api)

      first = get!(api, "/v2/droplets")
      assert first.status == 200
      assert first.headers["content-type"] == "application/json; charset=utf-8"
      assert String.to_integer(first.headers["content-length"]) == byte_size(first.body)
      body = json(first)
      assert body["meta"] == %{"total" => 45}
      assert ids(first) == Enum.to_list(1..20)

      assert body["links"]["pages"] == %{
               "next" => "#{url}/v2/droplets?page=2&per_page=20",
               "last" => "#{url}/v2/droplets?page=3&per_page=20"
             }

      second = get!(api, "/v2/droplets?page=2")
      assert ids(second) == Enum.to_list(21..40)

      assert json(second)["links"]["pages"] == %{
               "first" => "#{url}/v2/droplets?page=1&per_page=20",
               "prev" => "#{url}/v2/droplets?page=1&per_page=20",
               "next" => "#{url}/v2/droplets?page=3&per_page=20",
               "last" => "#{url}/v2/droplets?page=3&per_page=20"
             }

      third = get!(api, "/v2/droplets?page=3")
      assert ids(third) == Enum.to_list(41..45)

      assert json(third)["links"]["pages"] == %{
               "first" => "#{url}/v2/droplets?page=1&per_page=20",
               "prev" => "#{url}/v2/droplets?page=2&per_page=20"
             }
    end

    test "following next links walks every droplet once" do
      api = start_api(droplets: nodes(23))

      walk = fn walk, url, acc ->
        {:ok, resp} = get(url)
        body = json(resp)
        acc = acc ++ Enum.map(body["droplets"], & &1["id"])

        case body["links"]["pages"] do
          %{"next" => next} -> walk.(walk, next, acc)
          _ -> acc
        end
      end

      assert walk.(walk, FakeAPI.url(api) <> "/v2/droplets?per_page=5", []) ==
               Enum.to_list(1..23)

      assert FakeAPI.request_count(api) == 5
    end

    test "per_page above 200 is clamped; a single page has empty links" do
      api = start_api(droplets: nodes(250))
      resp = get!(api, "/v2/droplets?per_page=1000")
      assert length(ids(resp)) == 200
      assert json(resp)["links"]["pages"]["next"] =~ "per_page=200"

      small = start_api(droplets: nodes(3))
      body = small |> get!("/v2/droplets?per_page=200") |> json()
      assert body["links"] == %{"pages" => %{}}
      assert body["meta"] == %{"total" => 3}
    end

    test "no droplets is an empty single page" do
      api = start_api()

      assert api |> get!("/v2/droplets") |> json() ==
               %{"droplets" => [], "links" => %{"pages" => %{}}, "meta" => %{"total" => 0}}
    end

    test "a page past the end is empty" do
      api = start_api(droplets: nodes(5))
      body = api |> get!("/v2/droplets?per_page=2&page=9") |> json()
      assert body["droplets"] == []
      assert body["meta"]["total"] == 5
      assert body["links"]["pages"]["prev"] =~ "page=3&per_page=2"
      refute Map.has_key?(body["links"]["pages"], "next")
    end

    test "bad per_page or page is a 400 bad_request" do
      api = start_api(droplets: nodes(5))

      for q <- ["per_page=0", "per_page=abc", "per_page=", "per_page=-3", "page=0", "page=1.5"] do
        resp = get!(api, "/v2/droplets?" <> q)
        assert resp.status == 400, q
        assert %{"id" => "bad_request", "message" => _, "request_id" => _} = json(resp)
      end
    end
  end

  # ------------------------------------------------------------------ filters

  describe "filters" do
    test "tag_name selects droplets with the tag, and the links keep it" do
      api = start_api(droplets: nodes(30, &if(rem(&1, 3) == 0, do: ["env:prod"], else: ["x"])))
      resp = get!(api, "/v2/droplets?tag_name=env%3Aprod&per_page=4")
      assert ids(resp) == [3, 6, 9, 12]
      body = json(resp)
      assert body["meta"]["total"] == 10

      assert body["links"]["pages"]["next"] ==
               FakeAPI.url(api) <> "/v2/droplets?page=2&per_page=4&tag_name=env%3Aprod"

      {:ok, last} = get(body["links"]["pages"]["last"])
      assert ids(last) == [27, 30]
    end

    test "name is exact and case-insensitive" do
      api = start_api(droplets: nodes(12))
      assert api |> get!("/v2/droplets?name=NODE-1") |> ids() == [1]
      assert api |> get!("/v2/droplets?name=node") |> ids() == []
    end

    test "tag_name cannot be combined with name or type: a 422 with a DigitalOcean error body" do
      api = start_api(droplets: nodes(2, fn _ -> ["a"] end))

      for q <- ["tag_name=a&name=node-1", "tag_name=a&type=droplets", "tag_name=a&type=gpus"] do
        resp = get!(api, "/v2/droplets?" <> q)
        assert resp.status == 422, q

        assert %{"id" => "unprocessable_entity", "message" => message, "request_id" => _} =
                 json(resp)

        assert message =~ "tag_name cannot be combined"
      end
    end

    test "GPU droplets carry gpu_info and are listed only with type=gpus, which lists only them" do
      gpu = FakeAPI.droplet(id: 99, name: "gpu", gpu: true, tags: ["a"])
      api = start_api(droplets: nodes(2, fn _ -> ["a"] end) ++ [gpu])
      assert %{"gpu_info" => %{"count" => 1, "model" => _}, "size_slug" => "gpu-" <> _} = gpu
      refute Map.has_key?(FakeAPI.droplet(id: 1, name: "a"), "gpu_info")

      assert api |> get!("/v2/droplets") |> ids() == [1, 2]
      assert api |> get!("/v2/droplets?type=droplets") |> ids() == [1, 2]
      assert api |> get!("/v2/droplets?tag_name=a") |> ids() == [1, 2]
      assert api |> get!("/v2/droplets?type=gpus") |> ids() == [99]
      assert get!(api, "/v2/droplets?type=other").status == 400

      # The kind is gpu_info's to say, not the size slug's.
      plain = FakeAPI.droplet(id: 98, name: "plain", size_slug: "gpu-x")
      FakeAPI.add_droplet(api, plain)
      assert api |> get!("/v2/droplets?type=gpus") |> ids() == [99]
    end

    test "name goes with type: the spec does not forbid it" do
      gpus = [
        FakeAPI.droplet(id: 99, name: "g", gpu: true),
        FakeAPI.droplet(id: 98, name: "h", gpu: true)
      ]

      api = start_api(droplets: [FakeAPI.droplet(id: 1, name: "g") | gpus])
      resp = get!(api, "/v2/droplets?name=G&type=gpus&per_page=1")
      assert ids(resp) == [99]
      assert json(resp)["links"]["pages"] == %{}
      assert api |> get!("/v2/droplets?name=g") |> ids() == [1]
    end

    test "a 403 fault may carry the message naming the missing scope" do
      api = start_api(droplets: nodes(1))
      FakeAPI.inject(api, {:status, 403, "You are missing the required scope: vpc:read"})
      resp = get!(api, "/v2/droplets")
      assert resp.status == 403

      assert %{"id" => "forbidden", "message" => "You are missing the required scope: vpc:read"} =
               json(resp)
    end
  end

  # ---------------------------------------------------- auth, routes, limits

  describe "authentication and routes" do
    test "a missing or wrong token is a 401 that is not counted" do
      api = start_api(droplets: nodes(1))

      for headers <- [[], [auth("nope")], [{~c"authorization", ~c"Basic dGVzdC10b2tlbg=="}]] do
        resp = get!(api, "/v2/droplets", headers: headers)
        assert resp.status == 401

        assert %{"id" => "unauthorized", "message" => "Unable to authenticate you."} = json(resp)

        assert resp.headers["ratelimit-remaining"] == "5000"
      end

      assert get!(api, "/v2/droplets").headers["ratelimit-remaining"] == "4999"
    end

    test "other paths and methods are 404 JSON errors" do
      api = start_api()
      resp = get!(api, "/v2/account")
      assert resp.status == 404
      assert %{"id" => "not_found"} = json(resp)

      {:ok, {{_, status, _}, _, _}} =
        :httpc.request(
          :post,
          {String.to_charlist(FakeAPI.url(api) <> "/v2/droplets"), [auth()], ~c"application/json",
           ~c"{}"},
          [],
          []
        )

      assert status == 404
    end

    test "header names are case-insensitive and the connection is kept alive" do
      api = start_api(droplets: nodes(1))
      first = request("/v2/droplets", ["AUTHORIZATION: bearer test-token"])

      second =
        request("/v2/droplets?page=1", ["Authorization: Bearer test-token", "Connection: close"])

      # Both requests in one write: the server answers them in order on the
      # same connection, then honours Connection: close.
      {data, :closed} = raw(api, first <> second)
      [_, one, two] = String.split(data, "HTTP/1.1 ")
      assert one =~ ~r/\A200 OK\r\n/
      assert one =~ "connection: keep-alive\r\n"
      assert two =~ ~r/\A200 OK\r\n/
      assert two =~ "connection: close\r\n"
      assert FakeAPI.request_count(api) == 2
    end

    test "an idle connection is closed after keep_alive_timeout" do
      api = start_api(keep_alive_timeout: 200)
      {:ok, sock} = :gen_tcp.connect({127, 0, 0, 1}, port(api), [:binary, active: false])
      # Closed by the server (the default keeps one open a minute), not before the timeout.
      {elapsed, result} = :timer.tc(fn -> :gen_tcp.recv(sock, 0, 30_000) end)
      assert result == {:error, :closed}
      assert elapsed >= 150_000
    end

    test "a malformed request gets a 400 and is not logged" do
      api = start_api()
      {data, :closed} = raw(api, "NONSENSE\r\n\r\n")
      assert data =~ ~r/\AHTTP\/1.1 400 /
      assert FakeAPI.request_count(api) == 0
    end
  end

  describe "rate limit" do
    test "the burst window answers 429 with retry-after, then frees up" do
      # Four requests one after another fall in the 1 s window unless the
      # machine stalls for a second: the server's own log says whether they
      # did, and a run where they did not is tried again on a fresh server.
      {api, limited} =
        Enum.find_value(1..3, fn _attempt ->
          api = start_api(droplets: nodes(1), rate_limit: [per_minute: 3, minute_ms: 1_000])
          remaining = for _ <- 1..3, do: get!(api, "/v2/droplets").headers["ratelimit-remaining"]
          assert remaining == ["4999", "4998", "4997"]
          limited = get!(api, "/v2/droplets")
          [first, _, _, fourth] = FakeAPI.requests(api)
          if fourth.at_ms - first.at_ms < 1_000, do: {api, limited}
        end) || flunk("no attempt sent four requests within a second")

      assert limited.status == 429

      assert %{"id" => "too_many_requests", "message" => "API Rate limit exceeded."} =
               json(limited)

      assert limited.headers["retry-after"] == "1"
      assert limited.headers["ratelimit-limit"] == "5000"
      assert limited.headers["ratelimit-remaining"] == "4997"

      Process.sleep(String.to_integer(limited.headers["retry-after"]) * 1_000 + 50)
      ok = get!(api, "/v2/droplets")
      assert ok.status == 200
      assert ok.headers["ratelimit-remaining"] == "4996"
    end

    test "the hour window runs out: 429 with remaining 0 and the reset time" do
      api = start_api(droplets: nodes(1), rate_limit: [per_hour: 2, hour_ms: 60_000])
      before = System.system_time(:second)
      first = get!(api, "/v2/droplets")
      after_ = System.system_time(:second)
      assert first.headers["ratelimit-remaining"] == "1"
      # A minute after the request, rounded up to a whole second.
      reset = String.to_integer(first.headers["ratelimit-reset"])
      assert reset in (before + 60)..(after_ + 61)

      assert get!(api, "/v2/droplets").headers["ratelimit-remaining"] == "0"

      limited = get!(api, "/v2/droplets")
      assert limited.status == 429
      assert limited.headers["ratelimit-remaining"] == "0"
      assert limited.headers["ratelimit-reset"] == Integer.to_string(reset)
      refute Map.has_key?(limited.headers, "retry-after")

      # Raising the limit empties the windows.
      :ok = FakeAPI.set_rate_limit(api, per_hour: 10)
      ok = get!(api, "/v2/droplets")
      assert ok.status == 200
      assert ok.headers["ratelimit-limit"] == "10"
      assert ok.headers["ratelimit-remaining"] == "9"
    end

    test "with nothing counted, ratelimit-reset is now" do
      api = start_api()
      before = System.system_time(:second)
      reset = String.to_integer(get!(api, "/", headers: []).headers["ratelimit-reset"])
      assert reset in before..System.system_time(:second)
    end

    test "invalid limits are refused" do
      assert_raise ArgumentError, fn -> FakeAPI.start_link(rate_limit: [per_minute: -1]) end
      api = start_api()
      assert_raise ArgumentError, fn -> FakeAPI.set_rate_limit(api, hour_ms: 0) end
    end
  end

  # ------------------------------------------------------------------- faults

  describe "faults" do
    setup do
      %{api: start_api(droplets: nodes(3))}
    end

    test "{:status, code} sends DigitalOcean error bodies", %{api: api} do
      for {code, id} <- [
            {500, "server_error"},
            {503, "service_unavailable"},
            {502, "service_unavailable"},
            {403, "forbidden"},
            {404, "not_found"}
          ] do
        FakeAPI.inject(api, {:status, code})
        resp = get!(api, "/v2/droplets")
        assert resp.status == code
        assert %{"id" => ^id, "message" => _, "request_id" => _} = json(resp)
      end

      assert get!(api, "/v2/droplets").status == 200
    end

    test "injected 429 and 401 carry their headers and are not counted", %{api: api} do
      FakeAPI.inject(api, {:status, 429})
      limited = get!(api, "/v2/droplets")
      assert limited.status == 429
      assert limited.headers["retry-after"] == "1"
      assert limited.headers["ratelimit-remaining"] == "5000"

      FakeAPI.inject(api, {:status, 401})
      assert get!(api, "/v2/droplets").status == 401
      assert get!(api, "/v2/droplets").headers["ratelimit-remaining"] == "4999"
    end

    test "{:slow, ms} answers normally after the delay", %{api: api} do
      FakeAPI.inject(api, {:slow, 300})
      {elapsed, resp} = :timer.tc(fn -> get!(api, "/v2/droplets") end)
      assert elapsed >= 300_000
      assert ids(resp) == [1, 2, 3]
    end

    test "a slow answer does not hold up other connections", %{api: api} do
      FakeAPI.inject(api, {:slow, 60_000})
      {:ok, slow} = :gen_tcp.connect({127, 0, 0, 1}, port(api), [:binary, active: false])
      :ok = :gen_tcp.send(slow, request("/v2/droplets"))
      # Decided (and logged) before the second request is sent: its
      # connection is now waiting out the delay.
      TestCluster.await(fn -> FakeAPI.request_count(api) == 1 end)

      {data, :closed} =
        raw(
          api,
          request("/v2/droplets", ["authorization: Bearer test-token", "connection: close"])
        )

      assert data =~ ~r/\AHTTP\/1.1 200 /
      # Answered while the slow one has still received nothing.
      assert {:error, :timeout} = :gen_tcp.recv(slow, 0, 0)
      assert [%{fault: :slow}, %{fault: nil}] = FakeAPI.requests(api)
      :gen_tcp.close(slow)
    end

    test ":html is a 200 with an HTML body", %{api: api} do
      FakeAPI.inject(api, :html)
      resp = get!(api, "/v2/droplets")
      assert resp.status == 200
      assert resp.headers["content-type"] =~ "text/html"
      assert resp.body =~ "<html>"
      assert {:error, _} = JSON.decode(resp.body)
    end

    test ":truncated sends the full content-length but half the body", %{api: api} do
      FakeAPI.inject(api, :truncated)
      assert {:error, _} = get(FakeAPI.url(api) <> "/v2/droplets")

      FakeAPI.inject(api, :truncated)
      {data, :closed} = raw(api, request("/v2/droplets"))
      [head, body] = String.split(data, "\r\n\r\n", parts: 2)
      [_, length] = Regex.run(~r/content-length: (\d+)/, head)
      assert byte_size(body) == div(String.to_integer(length), 2)
    end

    test ":reset resets the connection after part of the body", %{api: api} do
      FakeAPI.inject(api, :reset)
      assert {:error, _} = get(FakeAPI.url(api) <> "/v2/droplets")

      FakeAPI.inject(api, :reset)
      {data, :econnreset} = raw(api, request("/v2/droplets"))
      assert data =~ ~r/\AHTTP\/1.1 200 OK\r\n/
      assert [_head, body] = String.split(data, "\r\n\r\n", parts: 2)
      assert {:error, _} = JSON.decode(body)
    end

    test ":close closes the connection without an answer", %{api: api} do
      FakeAPI.inject(api, :close)
      {data, :closed} = raw(api, request("/v2/droplets"))
      assert data == ""

      FakeAPI.inject(api, :close)
      assert {:error, _} = get(FakeAPI.url(api) <> "/v2/droplets")
      assert [%{status: 0, fault: :close} | _] = FakeAPI.requests(api)
    end

    test "{:foreign_next, url} replaces next, even on a single page", %{api: api} do
      FakeAPI.inject(api, {:foreign_next, "https://api.example.com/v2/droplets?page=2"})
      body = api |> get!("/v2/droplets") |> json()
      assert body["links"]["pages"] == %{"next" => "https://api.example.com/v2/droplets?page=2"}
      assert length(body["droplets"]) == 3
    end

    test ":next_loop points next at the page itself", %{api: api} do
      FakeAPI.inject(api, :next_loop, page: 2)
      body = api |> get!("/v2/droplets?per_page=1&page=2") |> json()

      assert body["links"]["pages"]["next"] ==
               FakeAPI.url(api) <> "/v2/droplets?page=2&per_page=1"
    end

    test "{:redirect, url} is a 302 with a location", %{api: api} do
      FakeAPI.inject(api, {:redirect, "http://127.0.0.1:1/v2/droplets"})
      resp = get!(api, "/v2/droplets")
      assert resp.status == 302
      assert resp.headers["location"] == "http://127.0.0.1:1/v2/droplets"
      assert resp.headers["content-length"] == "0"
    end

    test ":empty_with_total lists nothing but claims a total", %{api: api} do
      FakeAPI.inject(api, :empty_with_total)
      body = api |> get!("/v2/droplets") |> json()
      assert body["droplets"] == []
      assert body["meta"]["total"] == 3
    end

    test "{:json, term} and {:raw, iodata} send wrong shapes", %{api: api} do
      FakeAPI.inject(api, {:json, %{"droplets" => %{"not" => "a list"}}})
      FakeAPI.inject(api, {:json, %{"droplets" => [%{"id" => "1", "name" => "x"}]}})
      FakeAPI.inject(api, {:raw, ["{\"droplets\": [", "{\"id\": 1,"]})

      assert json(get!(api, "/v2/droplets")) == %{"droplets" => %{"not" => "a list"}}
      assert [%{"id" => "1"}] = json(get!(api, "/v2/droplets"))["droplets"]
      raw = get!(api, "/v2/droplets")
      assert raw.status == 200
      assert raw.body == "{\"droplets\": [{\"id\": 1,"
    end

    test "{:huge, bytes} is a valid page of at least that size", %{api: api} do
      FakeAPI.inject(api, {:huge, 3_000_000})
      resp = get!(api, "/v2/droplets")
      assert byte_size(resp.body) >= 3_000_000
      assert byte_size(resp.body) < 3_000_100
      body = json(resp)
      assert length(body["droplets"]) == 3
      assert byte_size(body["padding"]) > 2_900_000
    end

    test "times, page and FIFO order decide which requests are hit", %{api: api} do
      FakeAPI.inject(api, {:status, 500}, page: 2, times: 2)
      FakeAPI.inject(api, {:status, 503})
      FakeAPI.inject(api, {:status, 502}, times: :infinity)

      statuses = fn paths -> Enum.map(paths, &get!(api, &1).status) end

      assert statuses.(["/v2/droplets?page=2&per_page=1", "/v2/droplets"]) == [500, 503]

      assert statuses.(["/v2/droplets?page=2&per_page=1", "/v2/droplets?page=2&per_page=1"]) ==
               [500, 502]

      assert statuses.(["/v2/droplets", "/v2/droplets"]) == [502, 502]
      :ok = FakeAPI.clear_faults(api)
      assert statuses.(["/v2/droplets"]) == [200]
    end

    test "unknown faults and options are refused", %{api: api} do
      assert_raise ArgumentError, fn -> FakeAPI.inject(api, :explode) end
      assert_raise ArgumentError, fn -> FakeAPI.inject(api, {:status, 200}) end
      assert_raise ArgumentError, fn -> FakeAPI.inject(api, :html, times: 0) end
      assert_raise ArgumentError, fn -> FakeAPI.inject(api, {:json, {:tuple}}) end
    end
  end

  # -------------------------------------------------------------- request log

  describe "request log" do
    test "records every decided request in order" do
      api = start_api(droplets: nodes(2))
      t0 = System.monotonic_time(:millisecond)
      u0 = System.system_time(:millisecond)

      get!(api, "/v2/droplets?per_page=1&tag_name=x%20y")
      get!(api, "/v2/droplets", headers: [])
      get!(api, "/nope")
      FakeAPI.inject(api, :html)
      get!(api, "/v2/droplets")

      log = FakeAPI.requests(api)
      assert FakeAPI.request_count(api) == 4

      assert [
               %{
                 method: "GET",
                 path: "/v2/droplets",
                 query: %{"per_page" => "1", "tag_name" => "x y"},
                 status: 200,
                 authorized: true,
                 fault: nil
               },
               %{status: 401, authorized: false, query: %{}},
               %{path: "/nope", status: 404, authorized: true},
               %{status: 200, fault: :html}
             ] = log

      at = Enum.map(log, & &1.at_ms)
      assert at == Enum.sort(at)
      assert hd(at) >= t0

      assert Enum.all?(
               log,
               &(&1.unix_ms >= u0 and &1.unix_ms <= System.system_time(:millisecond))
             )

      :ok = FakeAPI.reset_requests(api)
      assert FakeAPI.requests(api) == []
      assert FakeAPI.request_count(api) == 0
    end
  end

  # -------------------------------------------------------------------- HTTPS

  describe "HTTPS" do
    test "a client trusting the CA gets through; one that does not is refused" do
      api = start_api(droplets: nodes(2), tls: true)
      url = FakeAPI.url(api)
      assert url =~ ~r{\Ahttps://127\.0\.0\.1:\d+\z}
      ca = FakeAPI.ca_file(api)
      assert File.read!(ca) =~ "-----BEGIN CERTIFICATE-----"

      trusting = [ssl: [verify: :verify_peer, cacertfile: String.to_charlist(ca)]]
      localhost = String.replace(url, "127.0.0.1", "localhost")
      assert {:ok, %{status: 200} = resp} = get(localhost <> "/v2/droplets", http: trusting)
      assert ids(resp) == [1, 2]

      assert {:ok, %{status: 200}} = get(url <> "/v2/droplets", http: trusting)

      # A profile of its own, or :httpc would reuse the trusted connection.
      {:ok, profile} = :inets.start(:httpc, profile: :"untrusting_#{System.unique_integer()}")
      stranger = TLS.generate()
      untrusting = [ssl: [verify: :verify_peer, cacerts: [stranger.ca_der], log_level: :none]]

      assert {:error, {:failed_connect, info}} =
               get(localhost <> "/v2/droplets", http: untrusting, profile: profile)

      assert inspect(info) =~ "unknown_ca"
      assert FakeAPI.request_count(api) == 2
      :inets.stop(:httpc, profile)

      :ok = FakeAPI.stop(api)
      refute File.exists?(ca)
    end

    test "the certificate is a v3 end-entity certificate for localhost, 127.0.0.1 and ::1" do
      %{cert_der: der, ca_der: ca_der} = TLS.generate()
      cert = :public_key.pkix_decode_cert(der, :otp)
      tbs = elem(cert, 1)
      assert elem(tbs, 1) == :v3

      extensions =
        Map.new(elem(tbs, 10), fn {:Extension, id, critical, value} -> {id, {critical, value}} end)

      assert {false, san} = extensions[{2, 5, 29, 17}]

      assert Enum.sort(san) ==
               Enum.sort(
                 dNSName: ~c"localhost",
                 dNSName: ~c"127.0.0.1",
                 iPAddress: <<127, 0, 0, 1>>,
                 iPAddress: <<1::128>>
               )

      assert {true, {:BasicConstraints, false, _}} = extensions[{2, 5, 29, 19}]
      assert {_, [{1, 3, 6, 1, 5, 5, 7, 3, 1}]} = extensions[{2, 5, 29, 37}]
      # ecdsa-with-SHA256 without parameters (RFC 5758), in the certificate
      # and in its signature: webpki refuses any other encoding.
      ecdsa_sha256 = <<0x30, 0x0A, 0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03, 0x02>>
      assert length(:binary.matches(der, ecdsa_sha256)) == 2

      assert :public_key.pkix_is_issuer(der, ca_der)
      ca_key = ca_der |> :public_key.pkix_decode_cert(:otp) |> elem(1) |> elem(7) |> elem(2)
      assert :public_key.pkix_verify(der, {ca_key, {:namedCurve, {1, 2, 840, 10045, 3, 1, 7}}})
    end

    test "ca_file is nil without TLS" do
      assert FakeAPI.ca_file(start_api()) == nil
    end
  end

  # ------------------------------------------------------------------ droplets

  describe "droplet/1" do
    setup do
      template = @all_example |> File.read!() |> JSON.decode!() |> Map.fetch!("droplets") |> hd()
      %{template: template}
    end

    test "has every field of the spec's example, with the same types", %{template: template} do
      droplet =
        FakeAPI.droplet(
          id: 42,
          name: "web-1",
          tags: ["app", "env:prod"],
          region: "fra1",
          private_ip: "127.0.0.42",
          public_ip: "127.1.0.42",
          ipv6: "::1"
        )

      assert_same_shape(droplet, template, [])
      assert droplet["id"] == 42
      assert droplet["name"] == "web-1"
      assert droplet["status"] == "active"
      assert droplet["tags"] == ["app", "env:prod"]
      assert droplet["region"]["slug"] == "fra1"
      assert droplet["vpc_uuid"] == template["vpc_uuid"]

      assert droplet["networks"] == %{
               "v4" => [
                 %{
                   "ip_address" => "127.0.0.42",
                   "netmask" => "255.0.0.0",
                   "gateway" => "nil",
                   "type" => "private"
                 },
                 %{
                   "ip_address" => "127.1.0.42",
                   "netmask" => "255.0.0.0",
                   "gateway" => "127.0.0.1",
                   "type" => "public"
                 }
               ],
               "v6" => [
                 %{
                   "ip_address" => "::1",
                   "netmask" => 128,
                   "gateway" => "::1",
                   "type" => "public"
                 }
               ]
             }

      # It survives the trip through JSON unchanged.
      assert droplet |> JSON.encode!() |> JSON.decode!() == droplet
    end

    test "nil addresses are left out; the default private address is loopback" do
      bare = FakeAPI.droplet(id: 1, name: "a", private_ip: nil)
      assert bare["networks"] == %{"v4" => [], "v6" => []}

      [%{"ip_address" => ip, "type" => "private"}] =
        FakeAPI.droplet(id: 70_000, name: "b")["networks"]["v4"]

      assert {:ok, {127, _, _, _}} = :inet.parse_strict_address(String.to_charlist(ip))

      refute ip ==
               FakeAPI.droplet(id: 70_001, name: "c")["networks"]["v4"]
               |> hd()
               |> Map.get("ip_address")
    end

    test "status, vpc_uuid and size_slug can be set" do
      d = FakeAPI.droplet(id: 1, name: "a", status: "off", vpc_uuid: "v", size_slug: "gpu-x")

      assert {d["status"], d["vpc_uuid"], d["size_slug"], d["size"]["slug"]} ==
               {"off", "v", "gpu-x", "gpu-x"}
    end

    test "vpc_uuid: nil and tags: nil leave the fields out, as for a token without their scopes" do
      d = FakeAPI.droplet(id: 1, name: "a", vpc_uuid: nil, tags: nil)
      refute Map.has_key?(d, "vpc_uuid")
      refute Map.has_key?(d, "tags")
      assert %{"vpc_uuid" => _, "tags" => []} = FakeAPI.droplet(id: 1, name: "a")
    end

    test "non-loopback addresses and missing fields raise" do
      for opts <- [
            [private_ip: "10.0.0.1"],
            [public_ip: "8.8.8.8"],
            [ipv6: "2604:a880::1"],
            [private_ip: "::1"],
            [ipv6: "127.0.0.1"],
            [private_ip: "localhost"]
          ] do
        assert_raise ArgumentError, fn -> FakeAPI.droplet([id: 1, name: "a"] ++ opts) end
      end

      assert_raise ArgumentError, fn -> FakeAPI.droplet(name: "a") end
      assert_raise ArgumentError, fn -> FakeAPI.droplet(id: 1) end
      assert_raise ArgumentError, fn -> FakeAPI.droplet(id: "1", name: "a") end
    end
  end

  defp assert_same_shape(value, template, path) when is_map(template) do
    assert is_map(value), "#{inspect(path)} is not an object"
    assert Enum.sort(Map.keys(value)) == Enum.sort(Map.keys(template)), "keys of #{inspect(path)}"
    for {k, v} <- template, do: assert_same_shape(value[k], v, path ++ [k])
  end

  defp assert_same_shape(value, [_ | _] = template, path) do
    assert is_list(value), "#{inspect(path)} is not an array"
    for item <- value, do: assert_same_shape(item, hd(template), path ++ [0])
  end

  defp assert_same_shape(value, template, path) do
    assert type(value) == type(template), "type of #{inspect(path)}"
  end

  defp type(v) when is_binary(v), do: :string
  defp type(v) when is_integer(v), do: :integer
  defp type(v) when is_float(v), do: :float
  defp type(v) when is_boolean(v), do: :boolean
  defp type(nil), do: nil
  defp type(v) when is_list(v), do: :array

  describe "changing droplets" do
    test "put, add, update, remove and read back" do
      api = start_api(droplets: nodes(2))
      assert api |> FakeAPI.droplets() |> Enum.map(& &1["id"]) == [1, 2]

      :ok = FakeAPI.add_droplet(api, FakeAPI.droplet(id: 3, name: "three"))
      :ok = FakeAPI.update_droplet(api, 1, %{status: "off"})
      :ok = FakeAPI.update_droplet(api, 2, &Map.put(&1, "tags", ["new"]))
      assert {:error, :not_found} = FakeAPI.update_droplet(api, 9, %{})

      body = api |> get!("/v2/droplets") |> json()

      assert Enum.map(body["droplets"], &{&1["id"], &1["status"], &1["tags"]}) ==
               [{1, "off", []}, {2, "active", ["new"]}, {3, "active", []}]

      assert api |> get!("/v2/droplets?tag_name=new") |> ids() == [2]

      :ok = FakeAPI.remove_droplet(api, 2)
      assert {:error, :not_found} = FakeAPI.remove_droplet(api, 2)
      assert api |> get!("/v2/droplets?tag_name=new") |> ids() == []
      assert api |> FakeAPI.droplets() |> Enum.map(& &1["id"]) == [1, 3]

      :ok = FakeAPI.put_droplets(api, nodes(1))
      assert api |> get!("/v2/droplets") |> ids() == [1]
    end

    test "droplets with non-loopback addresses are refused" do
      api = start_api()
      example = @all_example |> File.read!() |> JSON.decode!() |> Map.fetch!("droplets")
      assert_raise ArgumentError, fn -> FakeAPI.put_droplets(api, example) end
      assert_raise ArgumentError, fn -> FakeAPI.add_droplet(api, hd(example)) end
      :ok = FakeAPI.add_droplet(api, FakeAPI.droplet(id: 1, name: "a"))
      outside = %{"networks" => %{"v4" => [%{"ip_address" => "10.0.0.1"}]}}
      assert_raise ArgumentError, fn -> FakeAPI.update_droplet(api, 1, outside) end

      assert [%{"networks" => %{"v4" => [%{"ip_address" => "127." <> _}]}}] =
               FakeAPI.droplets(api)

      assert_raise ArgumentError, fn -> FakeAPI.start_link(ip: {10, 0, 0, 1}) end
    end

    test "a page of 200 out of 10,000 droplets is quick" do
      # Work counted in the server's reductions, not in time: one pass over
      # the droplets for a filter it has not seen, then a page costs the same
      # whether there are 200 droplets or 10,000.
      small =
        start_api(
          droplets: for(i <- 1..200, do: FakeAPI.droplet(id: i, name: "n#{i}", tags: ["app"]))
        )

      droplets = for i <- 1..10_000, do: FakeAPI.droplet(id: i, name: "n#{i}", tags: ["app"])
      api = start_api(droplets: droplets)

      {first, resp} = reductions(api, "/v2/droplets?per_page=200&page=37&tag_name=app")
      assert ids(resp) == Enum.to_list(7201..7400)
      assert json(resp)["meta"]["total"] == 10_000
      {again, _} = reductions(api, "/v2/droplets?per_page=200&page=38&tag_name=app")

      {_, _} = reductions(small, "/v2/droplets?per_page=200&page=1&tag_name=app")
      {small_page, resp} = reductions(small, "/v2/droplets?per_page=200&page=1&tag_name=app")
      assert length(ids(resp)) == 200

      assert first <= 20 * 10_000, "#{first} reductions for the first page"

      assert again <= 2 * small_page,
             "#{again} reductions a page, #{small_page} with 200 droplets"
    end
  end

  # The reductions the server process spent on a GET of `path`, and the response.
  defp reductions(api, path) do
    url = FakeAPI.url(api)
    {:reductions, before} = Process.info(api, :reductions)
    {:ok, resp} = get(url <> path)
    {:reductions, after_} = Process.info(api, :reductions)
    {after_ - before, resp}
  end

  test "a server on ::1 hands out an IPv6 URL" do
    case FakeAPI.start_link(ip: {0, 0, 0, 0, 0, 0, 0, 1}, droplets: nodes(1)) do
      {:ok, api} ->
        assert FakeAPI.url(api) =~ ~r{\Ahttp://\[::1\]:\d+\z}

        {data, :closed} =
          raw(
            api,
            request("/v2/droplets?name=node-1", [
              "authorization: Bearer test-token",
              "connection: close"
            ]),
            {0, 0, 0, 0, 0, 0, 0, 1}
          )

        assert data =~ ~r/\AHTTP\/1.1 200 OK/
        assert data =~ ~s("meta":{"total":1})
        FakeAPI.stop(api)

      {:error, :eaddrnotavail} ->
        # No IPv6 loopback on this machine.
        :ok
    end
  end

  # --------------------------------------------------------------------- JSON

  describe "JSON" do
    test "round-trips both example responses" do
      for path <- [@all_example, @tagged_example] do
        decoded = path |> File.read!() |> JSON.decode!()
        assert decoded |> JSON.encode!() |> JSON.decode!() == decoded
        assert is_list(decoded["droplets"])
      end

      all = @all_example |> File.read!() |> JSON.decode!()
      assert all["meta"] == %{"total" => 3}
      assert all["links"] == %{"pages" => %{}}
      first = hd(all["droplets"])
      assert first["size"]["price_hourly"] == 0.00743999984115362
      assert first["size"]["transfer"] == 1.0
      assert first["kernel"] == nil
      assert hd(first["networks"]["v6"])["netmask"] == 64
    end

    test "strings and unicode escapes" do
      assert JSON.decode(~S("\u00e9\u4e2d\ud83d\ude00\n\t\"\\\/\b\f\r\u0000")) ==
               {:ok, "é中😀\n\t\"\\/\b\f\r\0"}

      assert JSON.decode(~S("\u00E9")) == {:ok, "é"}
      assert JSON.decode(~s("é中😀")) == {:ok, "é中😀"}
      assert JSON.encode!("é中😀") == ~s("é中😀")
      assert JSON.encode!("a\"b\\c\n\u0001\u001f/") == ~S("a\"b\\c\n\u0001\u001F/")

      for s <- ["", "plain", "\u2028", <<0>>, "x\ry", String.duplicate("ü", 1000)] do
        assert s |> JSON.encode!() |> JSON.decode!() == s
      end

      assert {:error, {:lone_surrogate, 1}} = JSON.decode(~S("\ud800"))
      assert {:error, {:lone_surrogate, 1}} = JSON.decode(~S("\udc00x"))
      assert {:error, {:lone_surrogate, _}} = JSON.decode(~S("\ud800\u0041"))
      assert {:error, {:invalid_escape, _}} = JSON.decode(~S("\x"))
      assert {:error, {:invalid_escape, _}} = JSON.decode(~S("\u12g4"))
      assert {:error, {:control_character, 1}} = JSON.decode(<<?", ?\n, ?">>)
      assert {:error, {:invalid_utf8, 1}} = JSON.decode(<<?", 0xFF, ?">>)
      assert {:error, {:invalid_utf8, 1}} = JSON.decode(<<?", 0xC0, 0x80, ?">>)
      assert {:error, {:unexpected_end, 4}} = JSON.decode(~s("abc))
      assert_raise ArgumentError, fn -> JSON.encode!(<<0xFF>>) end
    end

    test "numbers" do
      assert JSON.decode(
               "[0, -0, 12, -12, 1.5, -0.25, 1e3, 1E+3, 2.5e-3, 123456789012345678901234567890]"
             ) ==
               {:ok,
                [
                  0,
                  0,
                  12,
                  -12,
                  1.5,
                  -0.25,
                  1.0e3,
                  1.0e3,
                  2.5e-3,
                  123_456_789_012_345_678_901_234_567_890
                ]}

      assert JSON.decode("1") == {:ok, 1}
      assert JSON.decode("-0.0") == {:ok, -0.0}

      for bad <- ["01", "1.", ".5", "-", "+1", "1e", "1e+", "0x10", "NaN", "Infinity", "1.2.3"] do
        assert {:error, _} = JSON.decode(bad), bad
      end

      assert {:error, {:number_out_of_range, 0}} = JSON.decode("1e400")

      for n <- [0, -1, 2 ** 70, 0.1, 0.1 + 0.2, 1.0e-300, 1.7976931348623157e308, -2.5, 100.0] do
        assert n |> JSON.encode!() |> JSON.decode!() === n
      end

      assert JSON.encode!(1.0) == "1.0"
      assert JSON.encode!(1.0e20) == "1.0e20"
    end

    test "nesting, whitespace and literals" do
      deep = Enum.reduce(1..500, [], fn _, acc -> [acc] end)
      assert deep |> JSON.encode!() |> JSON.decode!() == deep

      deep_object = Enum.reduce(1..200, %{}, fn i, acc -> %{"k#{i}" => acc} end)
      assert deep_object |> JSON.encode!() |> JSON.decode!() == deep_object

      assert JSON.decode(
               " \t\r\n{ \"a\" : [ true , false , null ] , \"b\" : { } , \"c\" : [ ] } \n"
             ) ==
               {:ok, %{"a" => [true, false, nil], "b" => %{}, "c" => []}}

      assert JSON.decode(~s({"a":1,"a":2})) == {:ok, %{"a" => 2}}
      assert JSON.encode!(%{a: :b, c: [nil, true]}) == ~s({"a":"b","c":[null,true]})

      for bad <- [
            "",
            " ",
            "[1,]",
            "{\"a\":1,}",
            "{a:1}",
            "[1 2]",
            "{\"a\" 1}",
            "tru",
            "nul",
            "[",
            "{",
            "\"",
            "[1]x",
            "{}{}",
            "'a'"
          ] do
        assert {:error, {_, _}} = JSON.decode(bad), inspect(bad)
      end

      assert_raise ArgumentError, fn -> JSON.encode!({:a, 1}) end
      assert_raise ArgumentError, fn -> JSON.encode!([1 | 2]) end
      assert_raise ArgumentError, fn -> JSON.decode!("[") end
    end
  end
end
