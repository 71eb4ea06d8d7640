defmodule LibclusterDroplet.NifBoundsTest do
  @moduledoc false
  # Every bound of the NIF held under hostile input: a listing's bytes,
  # the threads under slow DNS, helpers rebalanced between calls, list
  # arguments capped on the scheduler, and no 12-character piece of the
  # token in anything a listing returns.
  # Not async: it counts the VM's threads and fills the thread budget.
  use ExUnit.Case, async: false

  alias LibclusterDroplet.{Call, Native, TestCluster}

  @token "dop_v1_deadbeefcafebabefacade0123456789abcdef0123456789abcdef0123456789"
  @dns_threads 4

  setup do
    TestCluster.await(fn -> Native.debug_budget() == {0, 0} end, 60_000)
    :ok
  end

  # A server on loopback answering every request with `status` and `body`,
  # one connection at a time, each closed after its answer.
  defp serve(body, status \\ 200) do
    opts = [:binary, ip: {127, 0, 0, 1}, active: false, reuseaddr: true]
    {:ok, listen} = :gen_tcp.listen(0, opts)
    {:ok, port} = :inet.port(listen)
    pid = spawn(fn -> accept(listen, body, status) end)
    :ok = :gen_tcp.controlling_process(listen, pid)
    on_exit(fn -> Process.exit(pid, :kill) end)
    "http://127.0.0.1:#{port}"
  end

  defp accept(listen, body, status) do
    with {:ok, socket} <- :gen_tcp.accept(listen) do
      _ = read_head(socket, "")

      :gen_tcp.send(socket, [
        "HTTP/1.1 #{status} X\r\ncontent-type: application/json\r\n",
        "content-length: #{byte_size(body)}\r\nconnection: close\r\n\r\n",
        body
      ])

      :gen_tcp.close(socket)
      accept(listen, body, status)
    end
  end

  defp read_head(socket, got) do
    if String.contains?(got, "\r\n\r\n") do
      got
    else
      with {:ok, more} <- :gen_tcp.recv(socket, 0, 10_000), do: read_head(socket, got <> more)
    end
  end

  defp page(droplets) do
    ~s({"droplets":[#{Enum.join(droplets, ",")}],"meta":{"total":#{length(droplets)}}})
  end

  defp droplet(fields) do
    fields =
      Keyword.merge(
        [
          id: "1",
          name: ~s("web-1"),
          status: ~s("active"),
          tags: ~s(["web"]),
          networks: ~s({"v4":[{"ip_address":"10.0.0.2","type":"private"}],"v6":[]})
        ],
        fields
      )

    "{" <> Enum.map_join(fields, ",", fn {k, v} -> ~s("#{k}":#{v}) end) <> "}"
  end

  defp list(url, opts \\ []),
    do: LibclusterDroplet.list_droplets([token: @token, api_url: url] ++ opts)

  describe "a listing's bytes" do
    test "one droplet with 3 million one-letter tags (12 MB) fails at the tag bound" do
      tags = "[" <> String.duplicate(~s("a",), 2_999_999) <> ~s("a"])
      body = page([droplet(tags: tags)])
      assert byte_size(body) > 12_000_000
      url = serve(body)

      # Refused whole by the 4 MiB default of :max_body_bytes ...
      assert list(url) == {:error, {:body_too_large, 4 * 1024 * 1024}}
      # ... and, let in, stopped at the 1,001st tag.
      reason = {:listing_too_large, {:max_tags_per_droplet, 1_000}}
      assert list(url, max_body_bytes: 16 * 1024 * 1024) == {:error, reason}
      assert LibclusterDroplet.Error.class(reason) == :listing_too_large
      assert LibclusterDroplet.Error.format(reason) =~ "raise :max_tags_per_droplet"
    end

    test "every string, the addresses and the whole listing are bounded" do
      huge = ~s(") <> String.duplicate("n", 2_000_000) <> ~s(")

      for field <- [:name, :status, :tags, :vpc_uuid] do
        value = if field == :tags, do: "[#{huge}]", else: huge
        url = serve(page([droplet([{field, value}])]))

        assert list(url) == {:error, {:listing_too_large, {:max_string_bytes, 1_024}}},
               inspect(field)
      end

      v4 = ~s({"ip_address":"10.0.0.2","type":"private"})
      networks = ~s({"v4":[#{Enum.join(List.duplicate(v4, 65), ",")}]})
      url = serve(page([droplet(networks: networks)]))
      assert list(url) == {:error, {:listing_too_large, {:max_addresses_per_droplet, 64}}}
      assert {:ok, _} = list(url, max_addresses_per_droplet: 65)

      url = serve(page(for i <- 1..200, do: droplet(id: "#{i}", name: ~s("web-#{i}"))))
      assert {:ok, %{droplets: droplets}} = list(url)
      assert length(droplets) == 200

      assert list(url, max_listing_bytes: 10_000) ==
               {:error, {:listing_too_large, {:max_listing_bytes, 10_000}}}

      assert list(url, max_tags_per_droplet: 0) ==
               {:error,
                {:invalid_request,
                 "invalid value for :max_tags_per_droplet option: expected a positive integer " <>
                   "(value not shown)"}}
    end
  end

  describe "the token" do
    test "no 12-character piece of it comes back from a droplet's values or a 403's scope" do
      piece = fn at -> ~s(") <> binary_part(@token, at, 12) <> ~s(") end

      hostile =
        droplet(
          name: ~s("#{@token}"),
          status: piece.(1),
          tags: "[#{piece.(7)},\"web\",#{piece.(30)}]",
          region: ~s({"slug":#{piece.(20)}}),
          vpc_uuid: ~s("x#{binary_part(@token, 10, 50)}x"),
          networks: ~s({"v4":[{"ip_address":"#{@token}","type":#{piece.(59)}}],"v6":[]})
        )

      assert {:ok, listing} = list(serve(page([hostile])), network: :private)
      assert [%{name: "[REDACTED]", tags: ["[REDACTED]", "web", "[REDACTED]"]}] = listing.droplets
      assert_no_piece(inspect(listing, limit: :infinity, printable_limit: :infinity))

      body = ~s({"id":"forbidden","message":"missing scope: deadbeefcafebabefacade:read"})
      assert list(serve(body, 403)) == {:error, :forbidden}
    end
  end

  defp assert_no_piece(shown) do
    for at <- 0..(byte_size(@token) - 12) do
      piece = binary_part(@token, at, 12)
      refute String.contains?(shown, piece), "#{inspect(piece)} of the token in the output"
    end
  end

  describe "list arguments on the scheduler" do
    test "a million tags, or a 10 MB binary, are refused within 1 ms of scheduler time" do
      base = %{api_url: "http://127.0.0.1:1", token: @token}
      million = List.duplicate("t", 1_000_000)
      # The longest a list may be, of the longest binaries: what the NIF
      # reads on the scheduler at its worst. `per_page`, read after the
      # tags, then refuses it, so no thread is started: what is measured is
      # the reading alone.
      longest = for i <- 1..64, do: String.pad_leading("#{i}", 4_096, "t")

      calls = [
        million: Map.put(base, :tag_name, million),
        one_too_many: Map.put(base, :tag_name, List.duplicate("t", 65)),
        huge_token: %{base | token: String.duplicate("t", 10_000_000)},
        huge_tag: Map.put(base, :tag_name, [String.duplicate("t", 10_000_000)]),
        longest: Map.merge(base, %{tag_name: longest, per_page: 0})
      ]

      control = nif_slot(fn -> Native.debug_hold(:spin, 20) end)

      results =
        for {name, request} <- calls, _ <- 1..3 do
          ref = make_ref()
          {result, held_us} = nif_slot(fn -> Native.list_droplets(request, ref) end)
          {name, result, held_us}
        end

      assert {:ok, spun} = control
      assert spun >= 1_000, "the check missed a NIF holding its scheduler: #{spun} µs"

      for {name, result, _} <- results do
        case name do
          n when n in [:million, :one_too_many] ->
            assert result == {:error, {:invalid_request, "tag_name must number at most 64"}}

          :huge_token ->
            assert result == {:error, {:invalid_request, "token must be at most 4096 bytes"}}

          :huge_tag ->
            assert result ==
                     {:error, {:invalid_request, "each tag_name must be at most 4096 bytes"}}

          :longest ->
            assert result ==
                     {:error, {:invalid_request, "per_page must be an integer in 1..200"}}
        end
      end

      # The least of each call's runs: what the call itself costs. A busy
      # machine only adds to a run (a core shared with another process runs
      # slower); a call that does hold its scheduler holds it every run.
      least =
        results
        |> Enum.group_by(&elem(&1, 0), &elem(&1, 2))
        |> Map.new(fn {n, us} -> {n, Enum.min(us)} end)

      held = for {name, us} <- least, us >= 1_000, do: {name, us}
      assert held == [], "NIF calls held a scheduler for over 1 ms (µs): #{inspect(held)}"
    end
  end

  # `{result, held_us}`: how long `fun`, one NIF call, held the calling
  # scheduler thread, net of the time the OS kept it off a CPU (as in
  # secrets_and_boundary_test.exs).
  defp nif_slot(fun) do
    :erlang.garbage_collect()
    :erlang.yield()
    {tid, started, wait_before} = Native.debug_thread_times()
    result = fun.()
    {^tid, ended, wait_after} = Native.debug_thread_times()
    {result, div(ended - started - (wait_after - wait_before), 1_000)}
  end

  describe "threads" do
    # Every thread of this VM, from the kernel.
    defp vm_threads, do: length(Path.wildcard("/proc/self/task/*"))

    defp named(prefix) do
      "/proc/self/task/*/comm"
      |> Path.wildcard()
      # A thread may end between the listing and the read: then "".
      |> Enum.map(&with({:ok, name} <- File.read(&1), do: name, else: (_ -> "")))
      |> Enum.count(&String.starts_with?(&1, prefix))
    end

    test "under slow DNS, 20 rounds of 32 listings leave no thread behind" do
      on_exit(fn -> Native.debug_dns_delay(0) end)
      Native.debug_dns_delay(3_000)
      TestCluster.await(fn -> named("droplet_") == 0 end, 30_000)
      before = vm_threads()

      {:ok, request} =
        LibclusterDroplet.list_request(
          token: @token,
          api_url: "http://localhost:1",
          deadline: 300,
          connect_timeout: 300,
          api_timeout: 300
        )

      {outcomes, peaks} =
        Enum.map_reduce(1..20, [], fn _round, peaks ->
          calls = for _ <- 1..32, do: elem(LibclusterDroplet.start_list_droplets(request), 1)
          peak = vm_threads()

          answers =
            for %Call{ref: ref} = call <- calls do
              reason =
                receive do
                  {:droplet_nif_list, ^ref, {:error, reason}, _info} -> reason
                after
                  30_000 -> flunk("no answer")
                end

              # Held until its answer, as await_list/3 does: a handle
              # collected while its call runs cancels it.
              LibclusterDroplet.cancel(call)
              reason
            end

          {answers, [peak | peaks]}
        end)

      outcomes = List.flatten(outcomes)
      assert length(outcomes) == 640

      assert Enum.all?(
               outcomes,
               &(&1 == :timeout or &1 == {:transport, "more than 64 DNS lookups waiting"})
             ),
             inspect(Enum.uniq(outcomes))

      TestCluster.await(fn -> Native.debug_budget() == {0, 0} end)
      # The calls' own threads end with their answers: what is left is the
      # DNS pool, however many lookups hang.
      TestCluster.await(fn -> vm_threads() <= before + @dns_threads end, 30_000)
      after_answers = vm_threads() - before
      dns = named("libcluster_dns")
      assert dns <= @dns_threads
      peak = Enum.max(peaks) - before
      # The budget's 64 call threads (a round's 32, and the last round's
      # that answered and have yet to exit) and the DNS pool: never a thread
      # per lookup.
      assert peak <= 64 + @dns_threads, "#{peak} threads over the baseline"

      IO.puts(
        "\nslow DNS (3 s a lookup), 20 rounds of 32 listings: 640 answered, " <>
          "peak #{peak} threads over the VM's #{before}, #{after_answers} once all answered " <>
          "(the DNS pool: #{dns} of #{@dns_threads})"
      )
    end

    test "a call that started with no helper grows as helpers free up" do
      port = TestCluster.free_port()
      [hole] = TestCluster.allocate_addresses(1)
      sockets = TestCluster.black_hole(hole, port)
      on_exit(fn -> Enum.each(sockets, &:gen_tcp.close/1) end)

      # Every helper taken, eight calls' worth, by calls that run nothing.
      held =
        for _ <- 1..8 do
          {:ok, held, 128} = Native.debug_admit(1_024)
          held
        end

      {:ok, call} =
        LibclusterDroplet.start_probe(List.duplicate(hole, 2_000), port,
          timeout: 1_000,
          concurrency: 512
        )

      # Before the budget was rebalanced, this call would probe one black
      # hole at a time: 2,000 s.
      assert call.concurrency == 1
      Enum.each(held, &Native.debug_release/1)
      # Its first probe times out; from then on it grows to 512 at once.
      TestCluster.await(fn -> named("droplet_probe") == 512 end, 30_000)
      assert Native.debug_budget() == {1, 511}
      LibclusterDroplet.cancel(call)
      ref = call.ref
      assert_receive {:droplet_nif_probe, ^ref, {:error, :cancelled}}, 30_000
    end
  end
end
