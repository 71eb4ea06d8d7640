defmodule LibclusterDroplet.NifApiTest do
  @moduledoc false
  # The NIF's HTTP client against the fake DigitalOcean API, over real sockets.
  use ExUnit.Case, async: true

  import Bitwise

  alias LibclusterDroplet.{FakeAPI, Listing, Native, TestCluster}

  @token "dop_v1_nif_test_token"

  setup do
    {:ok, api} = FakeAPI.start_link(token: @token)
    {:ok, api: api}
  end

  defp droplets(n, opts \\ []) do
    for i <- 1..n do
      FakeAPI.droplet(
        id: 1_000 + i,
        name: "node-#{i}",
        tags: Keyword.get(opts, :tags, ["web"]),
        private_ip: "127.0.#{div(i, 250)}.#{rem(i, 250) + 2}",
        public_ip: "127.10.#{div(i, 250)}.#{rem(i, 250) + 2}"
      )
    end
  end

  defp list(api, opts \\ []) do
    LibclusterDroplet.list_droplets([api_url: FakeAPI.url(api), token: @token] ++ opts)
  end

  describe "listing" do
    test "follows pagination over 3 pages of 200, all or nothing", %{api: api} do
      FakeAPI.put_droplets(api, droplets(450))
      assert {:ok, %Listing{droplets: droplets, total: 450, requests: 3} = listing} = list(api)
      assert length(droplets) == 450
      assert Enum.map(droplets, & &1.id) == Enum.to_list(1_001..1_450)
      assert listing.rate_limit.limit == 5_000
      assert is_integer(listing.rate_limit.remaining)

      requests = FakeAPI.requests(api)
      assert Enum.map(requests, & &1.query["page"]) |> Enum.sort() == ["1", "2", "3"]
      assert Enum.all?(requests, &(&1.query["per_page"] == "200" and &1.authorized))
    end

    test "returns only the fields clustering needs, with the selected address", %{api: api} do
      FakeAPI.put_droplets(api, droplets(2))
      assert {:ok, %Listing{droplets: [d1, _]}} = list(api, network: :private)

      assert %{
               id: 1_001,
               name: "node-1",
               status: :active,
               tags: ["web"],
               region: "nyc3",
               address: "127.0.0.3",
               v4: v4,
               v6: []
             } = d1

      assert {"127.0.0.3", :private} in v4
      assert {"127.10.0.3", :public} in v4

      assert {:ok, %Listing{droplets: [%{address: "127.10.0.3"}, _]}} =
               list(api, network: :public)

      assert {:error, :no_private_ipv6} = list(api, network: :private, ipv6: true)
    end

    test "filters by tag_name and by name", %{api: api} do
      tagged =
        for {droplet, i} <- Enum.with_index(droplets(5), 1),
            do: Map.put(droplet, "tags", if(i <= 3, do: ["web"], else: ["db"]))

      FakeAPI.put_droplets(api, tagged)

      assert {:ok, %Listing{droplets: web}} = list(api, tag_name: "web")
      assert Enum.map(web, & &1.name) == ["node-1", "node-2", "node-3"]

      assert {:ok, %Listing{droplets: [%{name: "node-4"}]}} = list(api, name: "NODE-4")
      assert Enum.map(FakeAPI.requests(api), & &1.query["name"]) == [nil, "NODE-4"]

      assert {:error, {:invalid_request, _}} = list(api, tag_name: "web", name: "node-1")
    end

    test "a list of tags: one listing per tag, merged, each droplet once", %{api: api} do
      tagged =
        for {droplet, i} <- Enum.with_index(droplets(5), 1),
            do:
              Map.put(
                droplet,
                "tags",
                Enum.at([["web"], ["web", "db"], ["db"], ["x"], []], i - 1)
              )

      FakeAPI.put_droplets(api, tagged)

      assert {:ok, %Listing{droplets: found, requests: 2, total: 4}} =
               list(api, tag_name: ["web", "db"])

      assert Enum.map(found, & &1.name) == ["node-1", "node-2", "node-3"]
      assert Enum.map(FakeAPI.requests(api), & &1.query["tag_name"]) == ["web", "db"]

      # A single tag, in a list or not, is one listing.
      assert {:ok, %Listing{requests: 1}} = list(api, tag_name: ["web"])
      assert {:ok, %Listing{requests: 1}} = list(api, tag_name: ["web", "web"])

      for bad <- [[], ["web", ""], ["web", :db], ["web" | "db"], 7] do
        assert {:error, {:invalid_request, _}} = list(api, tag_name: bad), inspect(bad)
      end
    end

    test "gpus: true lists GPU droplets too, tags checked on them here", %{api: api} do
      gpus = [
        FakeAPI.droplet(
          id: 2_001,
          name: "gpu-web",
          gpu: true,
          tags: ["web"],
          private_ip: "127.0.9.1"
        ),
        FakeAPI.droplet(
          id: 2_002,
          name: "gpu-db",
          gpu: true,
          tags: ["db"],
          private_ip: "127.0.9.2"
        )
      ]

      FakeAPI.put_droplets(api, droplets(2) ++ gpus)

      assert {:ok, %Listing{droplets: found, requests: 1}} = list(api)
      assert Enum.map(found, & &1.name) == ["node-1", "node-2"]

      assert {:ok, %Listing{droplets: found, requests: 2}} = list(api, gpus: true)
      assert Enum.map(found, & &1.name) == ["node-1", "node-2", "gpu-web", "gpu-db"]

      FakeAPI.reset_requests(api)

      assert {:ok, %Listing{droplets: found, requests: 2}} =
               list(api, gpus: true, tag_name: "web")

      assert Enum.map(found, & &1.name) == ["node-1", "node-2", "gpu-web"]

      # The GPU listing asks for type=gpus and no tag (the API refuses both).
      assert [%{"tag_name" => "web"} = q1, %{"type" => "gpus"} = q2] =
               Enum.map(FakeAPI.requests(api), & &1.query)

      refute Map.has_key?(q1, "type")
      refute Map.has_key?(q2, "tag_name")
      assert Enum.all?(FakeAPI.requests(api), &(&1.status == 200))
    end

    test "gpus: :only lists GPU droplets alone; name is sent with type", %{api: api} do
      gpu =
        FakeAPI.droplet(
          id: 2_001,
          name: "gpu-1",
          gpu: true,
          tags: ["web"],
          private_ip: "127.0.9.1"
        )

      FakeAPI.put_droplets(api, droplets(2) ++ [gpu])

      assert {:ok, %Listing{droplets: [%{name: "gpu-1"}], requests: 1}} = list(api, gpus: :only)

      assert {:ok, %Listing{droplets: [%{name: "gpu-1"}], requests: 1}} =
               list(api, gpus: :only, name: "GPU-1")

      assert {:ok, %Listing{droplets: [], requests: 1}} = list(api, gpus: :only, name: "node-1")

      assert Enum.map(FakeAPI.requests(api), &Map.take(&1.query, ["type", "name"])) == [
               %{"type" => "gpus"},
               %{"type" => "gpus", "name" => "GPU-1"},
               %{"type" => "gpus", "name" => "node-1"}
             ]

      assert {:error, {:invalid_request, _}} = list(api, gpus: :maybe)
    end

    test "GPU droplets listed without their tags cannot be checked against tag_name", %{api: api} do
      gpu =
        FakeAPI.droplet(id: 2_001, name: "gpu-1", gpu: true, tags: nil, private_ip: "127.0.9.1")

      FakeAPI.put_droplets(api, [gpu])

      assert {:error, :tags_unknown = reason} = list(api, gpus: :only, tag_name: "web")
      assert LibclusterDroplet.Error.format(reason) =~ "needs the tag:read scope"
      # No tag to check: the missing tags do not matter.
      assert {:ok, %Listing{droplets: [%{name: "gpu-1", tags: []}]}} = list(api, gpus: :only)
    end

    test "several listings are all or nothing, and every request counts", %{api: api} do
      FakeAPI.put_droplets(api, droplets(2))
      # The first listing passes, the second (the GPU one) is refused.
      FakeAPI.set_rate_limit(api, per_minute: 1, minute_ms: 60_000)

      assert {:error, {:rate_limited, _}} = list(api, gpus: true)
      assert Enum.map(FakeAPI.requests(api), & &1.status) == [200, 429]
    end

    test "fields: each path asked for comes through, named by its path, redacted and bounded",
         %{api: api} do
      FakeAPI.put_droplets(api, droplets(2))
      FakeAPI.update_droplet(api, 1_002, %{"size_slug" => "s-" <> @token})
      {:ok, request} = LibclusterDroplet.list_request(api_url: FakeAPI.url(api), token: @token)
      paths = [["size_slug"], ["size", "vcpus"], ["features"], ["size"], ["nope"], ["size_slug"]]

      run = fn request ->
        ref = make_ref()
        {:ok, handle, _} = Native.list_droplets(request, ref)
        assert_receive {:droplet_nif_list, ^ref, result, _info}, 10_000
        :ok = Native.cancel(handle)
        result
      end

      assert {:ok, %{droplets: [one, two]}} = run.(Map.put(request, :fields, paths))

      assert one.fields == %{
               "size_slug" => "s-1vcpu-1gb",
               "size.vcpus" => 1,
               "features" => ["backups", "private_networking"],
               "size" => nil,
               "nope" => nil
             }

      assert two.fields["size_slug"] == "s-[REDACTED]"
      assert {:ok, %{droplets: [%{fields: none} | _]}} = run.(request)
      assert none == %{}

      assert {:error, {:listing_too_large, {:max_string_bytes, 12}}} =
               run.(%{request | max_string_bytes: 12} |> Map.put(:fields, [["size_slug"]]))

      for bad <- [
            [[]],
            [["a", "b", "c", "d", "e"]],
            [[:size_slug]],
            ["size_slug"],
            [["a"] | ["b"]],
            Enum.map(1..17, &["k#{&1}"])
          ] do
        assert {:error, {:invalid_request, "fields" <> _}} =
                 Native.list_droplets(Map.put(request, :fields, bad), make_ref())
      end
    end

    test "a 403 names the scope its message names, and nothing else of it", %{api: api} do
      FakeAPI.put_droplets(api, droplets(1))
      FakeAPI.inject(api, {:status, 403, "You are missing the required scope: tag:read"})
      assert {:error, {:forbidden, "tag:read"} = reason} = list(api, tag_name: "web")

      assert LibclusterDroplet.Error.format(reason) ==
               "the DigitalOcean API refused the request (403 Forbidden): the token lacks the tag:read scope"

      FakeAPI.inject(api, {:status, 403, "No. <script>#{@token}</script> Go away: Admin:read"})
      assert {:error, :forbidden} = list(api)
      FakeAPI.inject(api, {:status, 403})
      assert {:error, :forbidden} = list(api)
    end

    test "a wrong token is :unauthorized", %{api: api} do
      assert {:error, :unauthorized} =
               LibclusterDroplet.list_droplets(api_url: FakeAPI.url(api), token: "wrong")
    end

    test "429 carries retry-after", %{api: api} do
      FakeAPI.set_rate_limit(api, per_minute: 2, minute_ms: 30_000)
      assert {:ok, _} = list(api)
      assert {:ok, _} = list(api)
      assert {:error, {:rate_limited, seconds}} = list(api)
      assert seconds in 1..30
    end

    test "more droplets than :max_droplets fail the listing after page 1", %{api: api} do
      FakeAPI.put_droplets(api, droplets(450))
      assert {:error, {:too_many_droplets, 449} = reason} = list(api, max_droplets: 449)
      assert LibclusterDroplet.Error.format(reason) =~ "more than 449 droplets"
      assert Enum.map(FakeAPI.requests(api), & &1.query["page"]) == ["1"]
      assert {:ok, %Listing{droplets: droplets}} = list(api, max_droplets: 450)
      assert length(droplets) == 450
      assert {:error, {:invalid_request, _}} = list(api, max_droplets: 0)
    end

    test "a page with more droplets than per_page is inconsistent", %{api: api} do
      FakeAPI.put_droplets(api, droplets(3))

      FakeAPI.inject(
        api,
        {:json, %{"droplets" => FakeAPI.droplets(api), "meta" => %{"total" => 3}}}
      )

      assert {:error, {:inconsistent, detail}} = list(api, per_page: 2)
      assert detail =~ "more droplets than the 2 asked for"
    end

    test ":keep_alive is the idle age of kept connections, in ms", %{api: api} do
      FakeAPI.put_droplets(api, droplets(2))
      {:ok, request} = LibclusterDroplet.list_request(api_url: FakeAPI.url(api), token: @token)
      assert request.keep_alive_ms == 3_600_000
      assert {:ok, %Listing{}} = list(api, keep_alive: 0)
      assert {:ok, %Listing{}} = list(api, keep_alive: 86_400_000)
      assert {:error, {:invalid_request, _}} = list(api, keep_alive: 86_400_001)
      assert {:error, {:invalid_request, _}} = list(api, keep_alive: -1)
    end

    test "plain http is refused for a host that is not loopback" do
      assert {:error, {:invalid_request, detail}} =
               LibclusterDroplet.list_droplets(api_url: "http://10.1.2.3:4000", token: @token)

      assert detail =~ "loopback"
    end

    test "a FIFO as :ca_file is refused at once", %{api: api} do
      path = Path.join(System.tmp_dir!(), "fifo_ca_#{System.unique_integer([:positive])}.pem")
      {_, 0} = System.cmd("mkfifo", [path])
      on_exit(fn -> File.rm(path) end)

      # Refused by the options' check, before any NIF call; a CA file that
      # turns into a FIFO later is the core's (ca.rs, opened non-blocking).
      assert {:error, {:invalid_request, detail}} = list(api, ca_file: path, deadline: 500)
      assert detail =~ ":ca_file" and detail =~ "not a regular file"
    end

    test "a 500 in the middle of pagination fails the whole listing", %{api: api} do
      FakeAPI.put_droplets(api, droplets(450))
      FakeAPI.inject(api, {:status, 500}, page: 2)
      assert {:error, {:http_status, 500}} = list(api)
    end

    test "a next link to another host fails, and the token is never sent there", %{api: api} do
      {:ok, foreign} = :gen_tcp.listen(0, ip: {127, 0, 0, 1}, active: false)
      {:ok, port} = :inet.port(foreign)
      FakeAPI.put_droplets(api, droplets(450))

      for url <- [
            "http://127.0.0.1:#{port}/v2/droplets?page=2",
            "https://127.0.0.1:#{port}/v2/droplets?page=2"
          ] do
        FakeAPI.inject(api, {:edit, &put_in(&1, ["links", "pages", "next"], url)})
        assert {:error, :foreign_link} = list(api)
      end

      assert {:error, :timeout} = :gen_tcp.accept(foreign, 200)
    end

    test "a slow server times out", %{api: api} do
      url = FakeAPI.url(api)
      # Suspended, the server never answers: only a client's own timeouts
      # can end a call.
      :sys.suspend(api)
      test = self()
      started = System.monotonic_time(:millisecond)

      for {name, opts} <- [
            api_timeout: [api_timeout: 300, deadline: 60_000],
            deadline: [api_timeout: 60_000, deadline: 3_000]
          ] do
        spawn_link(fn ->
          result = LibclusterDroplet.list_droplets([api_url: url, token: @token] ++ opts)
          send(test, {name, result})
        end)
      end

      # The call with a 300 ms request timeout ends before the one only its
      # 3 s deadline can end: an ordering a busy machine slows alike on both
      # sides (ignored, the request timeout would be the 15 s default).
      assert_receive {first, {:error, :timeout}}, 30_000
      assert first == :api_timeout
      assert System.monotonic_time(:millisecond) - started >= 300
      assert_receive {:deadline, {:error, :timeout}}, 30_000
      # Both requests had reached the server, which still holds them unanswered.
      assert held_requests(api) == 2
      :sys.resume(api)
    end

    test "connection refused is a transport error" do
      {:ok, l} = :gen_tcp.listen(0, ip: {127, 0, 0, 1})
      {:ok, port} = :inet.port(l)
      :gen_tcp.close(l)

      assert {:error, {:transport, detail}} =
               LibclusterDroplet.list_droplets(api_url: "http://127.0.0.1:#{port}", token: @token)

      assert is_binary(detail)
    end

    test "while a call is in flight, its caller and other processes keep answering", %{api: api} do
      FakeAPI.put_droplets(api, droplets(3))
      {:ok, request} = LibclusterDroplet.list_request(api_url: FakeAPI.url(api), token: @token)
      # Suspended, the server holds the request unanswered until resumed: the
      # call stays in flight for as long as the test likes.
      :sys.suspend(api)
      test = self()

      caller =
        spawn_link(fn ->
          ref = make_ref()
          # The NIF returns at once; the answer will come as a message.
          {:ok, handle, _page_concurrency} = Native.list_droplets(request, ref)
          send(test, :call_returned)
          caller_loop(test, ref, handle)
        end)

      # A call that waited for the server would not return while it holds
      # the request: this would time out.
      assert_receive :call_returned, 10_000
      TestCluster.await(fn -> held_requests(api) == 1 end)
      echo = spawn_link(fn -> echo_loop() end)

      # With the request in flight, the caller itself and another process
      # both complete 100 round trips.
      for _ <- 1..100, pid <- [caller, echo] do
        send(pid, {:ping, self()})
        assert_receive {:pong, ^pid}, 10_000
      end

      # Still unanswered, so every round trip happened while it was in flight.
      refute_received {:listing, _}
      assert held_requests(api) == 1
      :sys.resume(api)
      assert_receive {:listing, {:ok, %Listing{droplets: [_, _, _]}}}, 10_000
    end
  end

  describe "TLS" do
    setup do
      {:ok, tls_api} = FakeAPI.start_link(token: @token, tls: true)
      FakeAPI.put_droplets(tls_api, droplets(3))
      {:ok, tls_api: tls_api}
    end

    test "an unknown CA is rejected", %{tls_api: api} do
      assert "https://" <> _ = FakeAPI.url(api)
      assert {:error, {:tls, _detail}} = list(api)
      assert FakeAPI.request_count(api) == 0
    end

    test "the CA file makes it trusted", %{tls_api: api} do
      assert {:ok, %Listing{droplets: [_, _, _]}} = list(api, ca_file: FakeAPI.ca_file(api))
    end

    test "an unreadable CA file is a clear error", %{tls_api: api} do
      path = Path.join(System.tmp_dir!(), "not_a_ca_#{System.unique_integer([:positive])}.pem")
      File.write!(path, "hello")
      on_exit(fn -> File.rm(path) end)
      assert {:error, {:ca_file, _}} = list(api, ca_file: path)
    end
  end

  describe "probes" do
    test "open, refused and black-holed ports" do
      {:ok, open} = :gen_tcp.listen(0, ip: {127, 0, 0, 1})
      {:ok, port} = :inet.port(open)
      # Same port on another loopback address with no listener: refused.
      # A third address whose accept queue is full: SYNs are dropped.
      {hole, fillers} = black_hole({127, 0, 0, 3}, port)

      # The timeout only ends the black-holed probe; it is long enough that
      # a busy machine cannot make the open port look black-holed too.
      results =
        LibclusterDroplet.probe(["127.0.0.1", "127.0.0.2", "127.0.0.3", "not an ip"], port,
          timeout: 1_000
        )

      assert [
               {"127.0.0.1", {:ok, us}},
               {"127.0.0.2", {:error, :refused}},
               {"127.0.0.3", {:error, :timeout}},
               {"not an ip", {:error, :invalid_address}}
             ] = results

      assert is_integer(us)
      Enum.each([open, hole | fillers], &:gen_tcp.close/1)
    end

    test "the check is one map, read generically; a bad one names its field, never a value" do
      {:ok, open} = :gen_tcp.listen(0, ip: {127, 0, 0, 1})
      {:ok, port} = :inet.port(open)
      tcp = %{kind: :tcp, port: port, timeout_ms: 1_000}
      ref = make_ref()
      assert {:ok, _handle, 1} = Native.probe(["127.0.0.1"], tcp, 4, ref)
      assert_receive {:droplet_nif_probe, ^ref, [{"127.0.0.1", {:ok, _us}}]}, 5_000

      token = "dop_v1_in_a_check_0123456789"
      long = String.duplicate("x", 1_025)

      for {check, detail} <- [
            {%{tcp | kind: :udp}, "check: kind is invalid"},
            {%{tcp | kind: token}, "check: kind is invalid"},
            {%{tcp | port: 70_000}, "check: port is invalid"},
            {%{tcp | port: token}, "check: port is invalid"},
            {%{tcp | timeout_ms: 0}, "check: timeout_ms is invalid"},
            {%{tcp | timeout_ms: [token]}, "check: timeout_ms is invalid"},
            {Map.delete(tcp, :port), "check: missing field `port`"},
            {Map.put(tcp, :path, "/"), "check: path is invalid"},
            {Map.new(1..17, &{:"k#{&1}", &1}), "check: must be a map of at most 16 entries"},
            {Map.put(tcp, "port", 1), "check: keys must be atoms"},
            {[kind: :tcp], "check: must be a map of at most 16 entries"}
          ] do
        assert Native.probe(["127.0.0.1"], check, 4, make_ref()) ==
                 {:error, {:invalid_request, detail}},
               detail
      end

      shape =
        "an atom, an integer, a binary of at most 1024 bytes, or a list of at most 16 of them"

      for bad <- [long, 1.5, [[1]], List.duplicate(1, 17), [1 | 2], {1}, self(), 1 <<< 64] do
        assert {:error, {:invalid_request, "check: path must be " <> ^shape}} =
                 Native.probe(["127.0.0.1"], Map.put(tcp, :path, bad), 4, make_ref())
      end

      # A list of 16 scalars is read (and refused by the TCP kind as a field it lacks).
      assert {:error, {:invalid_request, "check: path is invalid"}} =
               Native.probe(
                 ["127.0.0.1"],
                 Map.put(tcp, :path, [1, :a, "b", nil, true]),
                 4,
                 make_ref()
               )

      :gen_tcp.close(open)
    end
  end

  defp black_hole(ip, port) do
    {:ok, listener} = :gen_tcp.listen(port, ip: ip, backlog: 0, reuseaddr: true)

    # Fill the accept queue (backlog + 1 on Linux) without accepting.
    fillers =
      for _ <- 1..4,
          match?({:ok, _}, result = :gen_tcp.connect(ip, port, [], 200)),
          do: elem(result, 1)

    {listener, fillers}
  end

  defp echo_loop do
    receive do
      {:ping, from} ->
        send(from, {:pong, self()})
        echo_loop()
    end
  end

  # Answers pings until its listing arrives, then hands the listing over.
  # Holds the call's handle meanwhile: dropped, it would cancel the call.
  defp caller_loop(test, ref, handle) do
    receive do
      {:ping, from} ->
        send(from, {:pong, self()})
        caller_loop(test, ref, handle)

      {:droplet_nif_list, ^ref, result, info} ->
        send(test, {:listing, Listing.from_nif(result, info)})
        :ok = Native.cancel(handle)
    end
  end

  # How many requests the (suspended) server has received and not yet
  # decided: each connection asks it what to answer with one call.
  defp held_requests(api) do
    {:messages, messages} = Process.info(api, :messages)
    Enum.count(messages, &match?({:"$gen_call", _, {:request, _}}, &1))
  end
end
