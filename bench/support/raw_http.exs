defmodule Bench.RawHTTP do
  @moduledoc false
  # The cheapest client of the fake API we can write, to measure the fake
  # server's own time apart from our NIF client's: plain HTTP/1.1 GETs over
  # :gen_tcp on kept-alive connections, each response read in full by its
  # Content-Length and thrown away, never parsed.
  #
  # It fetches pages the way the NIF does (see pool.rs and api.rs): page 1
  # alone, then pages 2..N by a fixed set of workers, each taking the next
  # page number from a shared counter. Each worker is a process owning one
  # connection for its whole life, as ureq's agent keeps its connections
  # between polls.

  @doc "Starts `size` workers, each with one connection to `base_url`'s host and port."
  def start_pool(base_url, token, size) do
    %URI{host: host, port: port} = URI.parse(base_url)
    {:ok, ip} = :inet.parse_address(String.to_charlist(host))
    for _ <- 1..size, do: start_worker(ip, port, token)
  end

  @doc "Closes the workers' connections."
  def stop_pool(pool), do: Enum.each(pool, &send(&1, :stop))

  @doc """
  GETs `paths` (request targets such as `/v2/droplets?page=2`) with at most
  one request in flight per worker; returns the body bytes read.
  """
  def get_all(pool, paths) do
    next = :atomics.new(1, [])
    paths = List.to_tuple(paths)
    ref = make_ref()
    for worker <- pool, do: send(worker, {:drain, self(), ref, next, paths})

    for _ <- pool, reduce: 0 do
      bytes ->
        receive do
          {^ref, {:ok, read}} -> bytes + read
          {^ref, {:error, reason}} -> raise "raw HTTP client failed: #{inspect(reason)}"
        end
    end
  end

  defp start_worker(ip, port, token) do
    parent = self()

    worker =
      spawn_link(fn ->
        {:ok, sock} = :gen_tcp.connect(ip, port, [:binary, active: false, nodelay: true], 5_000)

        send(parent, {:connected, self()})
        serve(%{sock: sock, host: "#{:inet.ntoa(ip)}:#{port}", token: token})
      end)

    receive do
      {:connected, ^worker} -> worker
    end
  end

  defp serve(conn) do
    receive do
      {:drain, from, ref, next, paths} ->
        send(from, {ref, drain(conn, next, paths, 0)})
        serve(conn)

      :stop ->
        :gen_tcp.close(conn.sock)
    end
  end

  # Takes page after page from the shared counter until none is left.
  defp drain(conn, next, paths, bytes) do
    i = :atomics.add_get(next, 1, 1)

    if i > tuple_size(paths) do
      {:ok, bytes}
    else
      with {:ok, read} <- get(conn, elem(paths, i - 1)),
           do: drain(conn, next, paths, bytes + read)
    end
  end

  defp get(conn, path) do
    request = [
      "GET ",
      path,
      " HTTP/1.1\r\nhost: ",
      conn.host,
      "\r\nauthorization: Bearer ",
      conn.token,
      "\r\naccept: application/json\r\nuser-agent: bench-raw\r\n\r\n"
    ]

    with :ok <- :gen_tcp.send(conn.sock, request),
         {:ok, head, partial} <- read_head(conn.sock, <<>>),
         {:ok, length} <- content_length(head),
         :ok <- read_rest(conn.sock, length - byte_size(partial)) do
      {:ok, length}
    end
  end

  defp read_head(sock, buf) do
    case :binary.split(buf, "\r\n\r\n") do
      [head, partial] ->
        if String.starts_with?(head, "HTTP/1.1 200 "),
          do: {:ok, head, partial},
          else: {:error, {:status, head |> String.split("\r\n") |> hd()}}

      [_incomplete] ->
        with {:ok, data} <- :gen_tcp.recv(sock, 0, 5_000), do: read_head(sock, buf <> data)
    end
  end

  defp content_length(head) do
    case Regex.run(~r/^content-length:\s*(\d+)/mi, head) do
      [_, n] -> {:ok, String.to_integer(n)}
      nil -> {:error, :no_content_length}
    end
  end

  # With packet: :raw, recv(sock, n) returns exactly n bytes.
  defp read_rest(_sock, 0), do: :ok

  defp read_rest(sock, n) do
    with {:ok, _body} <- :gen_tcp.recv(sock, n, 5_000), do: :ok
  end
end
