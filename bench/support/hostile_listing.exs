defmodule Bench.HostileListing do
  @moduledoc false
  # One listing per fresh VM, and the VM's peak resident memory (VmHWM, which
  # sees the NIF's allocations too): a normal listing from the fake API next
  # to hostile ones from a raw server on loopback that answers page `n` of
  # GET /v2/droplets with `page.(n)`.

  alias Bench.{FakeDroplets, Helper}

  @token "dop_v1_bench_token_not_a_secret"

  # {name, the pages: nil for the fake API's, else {count, fn -> the
  # droplets of every page end}, list options}. The pages are built before
  # the measurement starts, and sent as they are.
  def scenarios do
    one_letter_tags = fn n -> "[" <> String.duplicate(~s("a",), n - 1) <> ~s("a"]) end
    kib_tags = fn n -> "[" <> Enum.map_join(1..n, ",", &~s("#{kib(&1)}")) <> "]" end

    [
      {"normal: 10,000 droplets (fake API)", nil, []},
      {"normal: 200 droplets, one page", {1, fn -> droplets(200, ~s(["web"])) end}, []},
      {"hostile: 1 droplet, 3 million one-letter tags (12 MB page)",
       {1, fn -> droplets(1, one_letter_tags.(3_000_000)) end}, []},
      {"the same, max_body_bytes: 16 MiB (the old default)",
       {1, fn -> droplets(1, one_letter_tags.(3_000_000)) end},
       [max_body_bytes: 16 * 1024 * 1024]},
      {"hostile: 50 pages of 200 droplets of 1,000 one-letter tags (10 million tags)",
       {50, fn -> droplets(200, one_letter_tags.(1_000)) end}, []},
      {"the same, max_listing_bytes: 8 MiB",
       {50, fn -> droplets(200, one_letter_tags.(1_000)) end},
       [max_listing_bytes: 8 * 1024 * 1024]},
      {"hostile: 50 pages of 200 droplets of 16 tags of 1,024 bytes (3.3 MB pages)",
       {50, fn -> droplets(200, kib_tags.(16)) end}, []}
    ]
  end

  defp kib(i), do: String.pad_leading("#{i}", 1_024, "t")

  defp droplets(n, tags) do
    Enum.map_join(1..n, ",", fn i ->
      ~s({"id":#{i},"name":"node-#{i}","status":"active","tags":#{tags},) <>
        ~s("networks":{"v4":[{"ip_address":"10.0.#{div(i, 250)}.#{rem(i, 250) + 1}","type":"private"}]}})
    end)
  end

  @doc "Runs scenario `index` in a fresh VM; its figures."
  def cold_run(index) do
    # Every application of this build: the library's own dependencies
    # (NimbleOptions...) and the fake API's (Jason, test support).
    build_lib = Path.dirname(:code.lib_dir(:libcluster_droplet))
    paths = for ebin <- Path.wildcard(Path.join(build_lib, "*/ebin")), do: ["-pa", ebin]
    child = Path.join(__DIR__, "hostile_listing_child.exs")
    elixir = System.find_executable("elixir")
    {out, 0} = System.cmd(elixir, List.flatten(paths) ++ [child, "#{index}"])

    out
    |> String.split("\n", trim: true)
    |> List.last()
    |> Base.decode64!()
    |> :erlang.binary_to_term()
  end

  @doc "The body of the child VM: one listing, measured."
  def child(index) do
    {_name, pages, opts} = Enum.at(scenarios(), index)
    url = serve(pages)
    :erlang.garbage_collect()
    rss_before = Helper.proc_status(["VmRSS"])["VmRSS"]
    :ok = Helper.reset_peak_rss()

    result =
      fn -> LibclusterDroplet.list_droplets([token: @token, api_url: url] ++ opts) end
      |> Task.async()
      |> Task.await(120_000)

    hwm = Helper.proc_status(["VmHWM"])["VmHWM"]

    outcome =
      case result do
        {:ok, listing} -> "ok, #{length(listing.droplets)} droplets"
        {:error, reason} -> inspect(reason)
      end

    figures = %{outcome: outcome, before: rss_before, peak: hwm}
    IO.puts(figures |> :erlang.term_to_binary() |> Base.encode64())
  end

  defp serve(nil) do
    api = FakeDroplets.start_api()
    FakeDroplets.put(api, 10_000)
    LibclusterDroplet.FakeAPI.url(api)
  end

  defp serve({count, page}) do
    page = page.()
    {:ok, listen} = :gen_tcp.listen(0, [:binary, ip: {127, 0, 0, 1}, active: false])
    {:ok, port} = :inet.port(listen)
    url = "http://127.0.0.1:#{port}"
    pid = spawn(fn -> accept(listen, url, count, page) end)
    :ok = :gen_tcp.controlling_process(listen, pid)
    url
  end

  defp accept(listen, url, count, page) do
    with {:ok, socket} <- :gen_tcp.accept(listen) do
      spawn(fn -> answer(socket, url, count, page) end)
      |> then(&:gen_tcp.controlling_process(socket, &1))

      accept(listen, url, count, page)
    end
  end

  defp answer(socket, url, count, page) do
    Process.sleep(1)
    {:ok, head} = read_head(socket, "")
    [_, n] = Regex.run(~r/[?&]page=(\d+)/, head)
    n = String.to_integer(n)

    links =
      if n < count,
        do:
          ~s({"pages":{"next":"#{url}/v2/droplets?page=#{n + 1}&per_page=200","last":"#{url}/v2/droplets?page=#{count}&per_page=200"}}),
        else: "{}"

    body = [~s({"droplets":[), page, ~s(],"links":#{links},"meta":{"total":#{count * 200}}})]

    :gen_tcp.send(socket, [
      "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n",
      "content-length: #{IO.iodata_length(body)}\r\nconnection: close\r\n\r\n",
      body
    ])

    :gen_tcp.close(socket)
  end

  defp read_head(socket, got) do
    if String.contains?(got, "\r\n\r\n"),
      do: {:ok, got},
      else:
        with({:ok, more} <- :gen_tcp.recv(socket, 0, 30_000), do: read_head(socket, got <> more))
  end
end
