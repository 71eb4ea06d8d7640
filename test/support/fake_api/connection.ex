defmodule LibclusterDroplet.FakeAPI.Connection do
  @moduledoc false
  # The socket side of the fake API: one acceptor per server and one process
  # per client connection. A connection process parses HTTP/1.1 requests,
  # asks the FakeAPI server what to answer (a short call: the server only
  # decides and hands back cached iodata) and does all the writing, sleeping
  # and breaking itself, so a slow or huge answer never holds up the server
  # or other connections.
  #
  # Process links: server (traps exits) - acceptor (traps exits) - one link
  # per connection process. Stopping the server kills the acceptor, whose
  # death kills every connection, so no connection outlives its server.

  alias LibclusterDroplet.FakeAPI.JSON

  @max_head 65_536
  @max_body 1_048_576
  @handshake_timeout 10_000
  # Long enough for the client to have read what was sent before the reset:
  # Linux drops unread received data when an RST arrives.
  @reset_grace_ms 50

  @type transport :: :tcp | :ssl

  @spec start_acceptor(pid, transport, term, keyword) :: pid
  def start_acceptor(server, transport, listen, opts) do
    spawn_link(fn ->
      Process.flag(:trap_exit, true)
      accept_loop(server, transport, listen, opts)
    end)
  end

  defp accept_loop(server, transport, listen, opts) do
    case accept(transport, listen) do
      {:ok, sock} ->
        pid = spawn_link(fn -> init(server, transport, opts) end)

        case controlling_process(transport, sock, pid) do
          :ok ->
            send(pid, {:socket, sock})

          {:error, _} ->
            # The client is already gone; the process would wait forever.
            Process.exit(pid, :kill)
            close(transport, sock)
        end

        flush_exits()
        accept_loop(server, transport, listen, opts)

      {:error, :closed} ->
        # The server closed (or lost) the listening socket. A non-normal
        # reason takes the connection processes down with the acceptor.
        exit(:shutdown)

      {:error, _transient} ->
        # e.g. emfile under a benchmark: back off instead of spinning.
        Process.sleep(10)
        accept_loop(server, transport, listen, opts)
    end
  end

  defp flush_exits do
    receive do
      {:EXIT, _pid, _reason} -> flush_exits()
    after
      0 -> :ok
    end
  end

  defp init(server, transport, opts) do
    sock =
      receive do
        {:socket, sock} -> sock
      end

    case handshake(transport, sock) do
      {:ok, sock} ->
        loop(%{
          server: server,
          transport: transport,
          sock: sock,
          buf: <<>>,
          idle_timeout: Keyword.fetch!(opts, :keep_alive_timeout)
        })

      {:error, _} ->
        # An untrusted certificate or a plain-HTTP client: nothing to answer.
        close(transport, sock)
    end
  end

  defp loop(state) do
    case parse(state.buf) do
      {:ok, req, rest} ->
        if answer(state, req) == :keep_alive, do: loop(%{state | buf: rest}), else: :ok

      :more when byte_size(state.buf) > @max_head + @max_body ->
        reject(state, 400, "Request too large.")

      :more ->
        receive_more(state)

      {:error, message} ->
        reject(state, 400, message)
    end
  end

  defp receive_more(%{transport: transport, sock: sock} = state) do
    setopts(transport, sock, active: :once)

    receive do
      {tag, ^sock, data} when tag in [:tcp, :ssl] ->
        loop(%{state | buf: state.buf <> data})

      {tag, ^sock} when tag in [:tcp_closed, :ssl_closed] ->
        :ok

      {tag, ^sock, _reason} when tag in [:tcp_error, :ssl_error] ->
        :ok
    after
      state.idle_timeout -> close(transport, sock)
    end
  end

  # ------------------------------------------------------------------ parsing

  # Returns {:ok, request, rest} once a whole request (head and body) is in
  # `buf`, so pipelined requests are answered in order.
  defp parse(buf) do
    # RFC 9112 2.2: ignore empty lines before a request line.
    buf = skip_crlf(buf)

    case :erlang.decode_packet(:http_bin, buf, []) do
      {:more, _} ->
        if byte_size(buf) > @max_head, do: {:error, "Request head too large."}, else: :more

      {:ok, {:http_request, method, target, version}, rest} ->
        with {:ok, headers, rest} <- parse_headers(rest, []),
             {:ok, body_len} <- body_length(headers),
             {:ok, path, query} <- split_target(target) do
          case rest do
            <<_body::binary-size(body_len), rest::binary>> ->
              {:ok,
               %{
                 method: to_string(method),
                 path: path,
                 query: query,
                 authorization: header(headers, "authorization"),
                 keep_alive?: keep_alive?(version, header(headers, "connection"))
               }, rest}

            _ ->
              :more
          end
        end

      {:ok, _other, _rest} ->
        {:error, "Malformed request line."}

      {:error, _} ->
        {:error, "Malformed request line."}
    end
  end

  defp skip_crlf(<<"\r\n", rest::binary>>), do: skip_crlf(rest)
  defp skip_crlf(<<"\n", rest::binary>>), do: skip_crlf(rest)
  defp skip_crlf(buf), do: buf

  defp parse_headers(buf, acc) do
    case :erlang.decode_packet(:httph_bin, buf, []) do
      {:ok, {:http_header, _, _field, original_name, value}, rest} ->
        # The original spelling, lowercased: header names are case-insensitive.
        name = original_name |> to_string() |> String.downcase()
        parse_headers(rest, [{name, value} | acc])

      {:ok, :http_eoh, rest} ->
        {:ok, Enum.reverse(acc), rest}

      {:more, _} ->
        if byte_size(buf) > @max_head, do: {:error, "Request head too large."}, else: :more

      _ ->
        {:error, "Malformed header."}
    end
  end

  defp header(headers, name) do
    case List.keyfind(headers, name, 0) do
      {_, value} -> value
      nil -> nil
    end
  end

  defp body_length(headers) do
    cond do
      header(headers, "transfer-encoding") != nil ->
        {:error, "Chunked request bodies are not supported."}

      (len = header(headers, "content-length")) != nil ->
        case Integer.parse(String.trim(len)) do
          {n, ""} when n >= 0 and n <= @max_body -> {:ok, n}
          _ -> {:error, "Invalid Content-Length."}
        end

      true ->
        {:ok, 0}
    end
  end

  defp split_target({:abs_path, target}), do: split_path(target)

  defp split_target({:absoluteURI, _scheme, _host, _port, target}), do: split_path(target)

  defp split_target(_), do: {:error, "Unsupported request target."}

  defp split_path(target) do
    target = target |> String.split("#", parts: 2) |> hd()

    case String.split(target, "?", parts: 2) do
      [path, query] -> {:ok, path, query}
      [path] -> {:ok, path, ""}
    end
  end

  defp keep_alive?(version, connection) do
    tokens =
      (connection || "")
      |> String.downcase()
      |> String.split(",", trim: true)
      |> Enum.map(&String.trim/1)

    cond do
      "close" in tokens -> false
      version == {1, 0} -> "keep-alive" in tokens
      true -> true
    end
  end

  # ---------------------------------------------------------------- answering

  defp answer(state, req) do
    plan = GenServer.call(state.server, {:request, Map.delete(req, :keep_alive?)}, :infinity)
    keep_alive? = req.keep_alive? and plan.action in [:respond, :slow]
    body = if req.method == "HEAD", do: [], else: plan.body

    head = head(plan.status, plan.headers, IO.iodata_length(plan.body), keep_alive?)

    %{transport: transport, sock: sock} = state

    case plan.action do
      :close ->
        close(transport, sock)
        :closed

      :truncated ->
        # Full Content-Length, half the body, then an orderly close.
        _ = send_data(transport, sock, [head | first_half(body)])
        close(transport, sock)
        :closed

      :reset ->
        _ = send_data(transport, sock, [head | first_half(body)])
        Process.sleep(@reset_grace_ms)
        reset(transport, sock)
        :closed

      action ->
        if action == :slow, do: Process.sleep(plan.delay_ms)

        case send_data(transport, sock, [head | body]) do
          :ok when keep_alive? ->
            :keep_alive

          _ ->
            close(transport, sock)
            :closed
        end
    end
  end

  defp first_half(body) do
    bin = IO.iodata_to_binary(body)
    binary_part(bin, 0, div(byte_size(bin), 2))
  end

  # A response the server was not asked about: the request could not be
  # parsed, so there is no method, path or token to log or count.
  defp reject(%{transport: transport, sock: sock}, status, message) do
    body = JSON.encode!(%{"id" => "bad_request", "message" => message})
    headers = [{"content-type", "application/json; charset=utf-8"}]
    _ = send_data(transport, sock, [head(status, headers, byte_size(body), false), body])
    close(transport, sock)
  end

  defp head(status, headers, length, keep_alive?) do
    [
      "HTTP/1.1 ",
      Integer.to_string(status),
      ?\s,
      reason(status),
      "\r\n",
      Enum.map(headers, fn {k, v} -> [k, ": ", v, "\r\n"] end),
      "content-length: ",
      Integer.to_string(length),
      "\r\nconnection: ",
      if(keep_alive?, do: "keep-alive", else: "close"),
      "\r\ndate: ",
      Calendar.strftime(DateTime.utc_now(), "%a, %d %b %Y %H:%M:%S GMT"),
      "\r\n\r\n"
    ]
  end

  @reasons %{
    200 => "OK",
    301 => "Moved Permanently",
    302 => "Found",
    307 => "Temporary Redirect",
    308 => "Permanent Redirect",
    400 => "Bad Request",
    401 => "Unauthorized",
    403 => "Forbidden",
    404 => "Not Found",
    422 => "Unprocessable Entity",
    429 => "Too Many Requests",
    500 => "Internal Server Error",
    502 => "Bad Gateway",
    503 => "Service Unavailable",
    504 => "Gateway Timeout"
  }

  defp reason(status), do: Map.get(@reasons, status, "Status #{status}")

  # ---------------------------------------------------------------- transport

  defp accept(:tcp, listen), do: :gen_tcp.accept(listen)
  defp accept(:ssl, listen), do: :ssl.transport_accept(listen)

  defp handshake(:tcp, sock), do: {:ok, sock}
  defp handshake(:ssl, sock), do: :ssl.handshake(sock, @handshake_timeout)

  defp controlling_process(:tcp, sock, pid), do: :gen_tcp.controlling_process(sock, pid)
  defp controlling_process(:ssl, sock, pid), do: :ssl.controlling_process(sock, pid)

  defp setopts(:tcp, sock, opts), do: :inet.setopts(sock, opts)
  defp setopts(:ssl, sock, opts), do: :ssl.setopts(sock, opts)

  defp send_data(:tcp, sock, data), do: :gen_tcp.send(sock, data)
  defp send_data(:ssl, sock, data), do: :ssl.send(sock, data)

  defp close(:tcp, sock), do: :gen_tcp.close(sock)
  defp close(:ssl, sock), do: :ssl.close(sock)

  # SO_LINGER {on, 0} makes close() send an RST instead of a FIN.
  defp reset(:tcp, sock) do
    _ = :inet.setopts(sock, linger: {true, 0})
    :gen_tcp.close(sock)
  end

  # Closing a TLS socket would first send a close_notify alert, which the
  # client reads as an orderly end of stream. To reset the TCP connection
  # under it, reach the port inside OTP's sslsocket record (an internal
  # shape, hence the fallback to an ordinary close if it ever changes).
  defp reset(:ssl, sock) do
    case sock do
      {:sslsocket, {:gen_tcp, port, _, _}, _} when is_port(port) ->
        _ = :inet.setopts(port, linger: {true, 0})
        # Any process may close a port, not only its owner.
        Port.close(port)

      _ ->
        close(:ssl, sock)
    end

    :ok
  end
end
