defmodule LibclusterDroplet.FakeMetadata do
  @moduledoc """
  A fake of the droplet metadata service (`http://169.254.169.254`), served
  over real HTTP/1.1 on a loopback address, for `test/release_test.exs`.

  Each droplet has its own metadata service, reachable only from the
  droplet, that answers questions about that droplet. So the test starts one
  per release node, on that node's own loopback address, answering the
  node's address for the private IPv4 path:

      {:ok, md} = FakeMetadata.start_link(ip: "127.1.0.5",
        answers: %{"/metadata/v1/interfaces/private/0/ipv4/address" => "127.1.0.5"})
      FakeMetadata.url(md)
      #=> "http://127.1.0.5:40123"

  `GET` of a path in `:answers` gets a 200 with that body (`text/plain`, no
  trailing newline, as the real service answers); anything else a 404.
  Every request's path is logged (`requests/1`), so a test can prove the
  script asked this server and nothing else. Each connection serves one
  request and is closed (curl opens one per invocation anyway).

  It only ever listens on a loopback address: the real service's address
  must never be contacted from a test.
  """
  use GenServer

  @typedoc "A running fake metadata service."
  @type server :: GenServer.server()

  @doc """
  Starts a server linked to the caller. Options: `:ip` (a loopback IPv4
  address as a string, required), `:answers` (path => body, default `%{}`).
  """
  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(opts) do
    opts = Keyword.validate!(opts, [:ip, answers: %{}])
    {:ok, ip} = :inet.parse_ipv4strict_address(String.to_charlist(Keyword.fetch!(opts, :ip)))

    unless elem(ip, 0) == 127,
      do: raise(ArgumentError, ":ip must be a loopback address, got: #{opts[:ip]}")

    GenServer.start_link(__MODULE__, {ip, opts[:answers]})
  end

  @doc "The base URL, `\"http://IP:PORT\"`, without a trailing slash."
  @spec url(server()) :: String.t()
  def url(server), do: GenServer.call(server, :url)

  @doc "The paths requested so far, oldest first."
  @spec requests(server()) :: [String.t()]
  def requests(server), do: server |> GenServer.call(:requests) |> Enum.reverse()

  @impl true
  def init({ip, answers}) do
    Process.flag(:trap_exit, true)

    {:ok, listener} =
      :gen_tcp.listen(0, [:binary, ip: ip, active: false, reuseaddr: true, packet: :http_bin])

    {:ok, port} = :inet.port(listener)
    server = self()
    acceptor = spawn_link(fn -> accept(listener, server, answers) end)
    url = "http://#{:inet.ntoa(ip)}:#{port}"
    {:ok, %{listener: listener, acceptor: acceptor, url: url, log: []}}
  end

  @impl true
  def handle_call(:url, _from, state), do: {:reply, state.url, state}
  def handle_call(:requests, _from, state), do: {:reply, state.log, state}

  @impl true
  def handle_info({:request, path}, state), do: {:noreply, %{state | log: [path | state.log]}}
  def handle_info({:EXIT, pid, reason}, %{acceptor: pid} = state), do: {:stop, reason, state}
  def handle_info(_msg, state), do: {:noreply, state}

  defp accept(listener, server, answers) do
    {:ok, conn} = :gen_tcp.accept(listener)
    # Served in its own process: a client that never finishes its request
    # must not stop the next one from being answered.
    pid = spawn(fn -> serve(conn, server, answers) end)
    :ok = :gen_tcp.controlling_process(conn, pid)
    send(pid, :go)
    accept(listener, server, answers)
  end

  defp serve(conn, server, answers) do
    receive do
      :go -> :ok
    end

    with {:ok, {:http_request, method, {:abs_path, path}, _version}} <- :gen_tcp.recv(conn, 0),
         :ok <- skip_headers(conn) do
      send(server, {:request, path})

      {status, body} =
        case {method, Map.fetch(answers, path)} do
          {:GET, {:ok, body}} -> {"200 OK", body}
          _ -> {"404 Not Found", "not found"}
        end

      :gen_tcp.send(conn, [
        "HTTP/1.1 #{status}\r\ncontent-type: text/plain\r\n",
        "content-length: #{byte_size(body)}\r\nconnection: close\r\n\r\n",
        body
      ])
    end

    :gen_tcp.close(conn)
  end

  defp skip_headers(conn) do
    case :gen_tcp.recv(conn, 0) do
      {:ok, :http_eoh} -> :ok
      {:ok, {:http_header, _, _, _, _}} -> skip_headers(conn)
      other -> other
    end
  end
end
