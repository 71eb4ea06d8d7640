defmodule LibclusterDroplet.FakeAPI.HTTP do
  @moduledoc false
  # The socket side of the fake API: HTTP/1.1 on loopback, with keep-alive,
  # over OTP's own request parser (`packet: :http_bin`), plain or TLS.
  #
  # Why not OTP's httpd: the tests need exact control of what is sent
  # (status, headers, a delay before answering, connection reuse with an
  # idle timeout in milliseconds) and a server that can be suspended with
  # `:sys.suspend/1` while it holds requests. Here each connection process
  # asks the FakeAPI server what to answer (`{:request, req}`) and writes it.
  #
  # Processes: every acceptor and connection runs under a Task.Supervisor
  # the FakeAPI server owns, so none outlives it. An acceptor that accepts
  # starts the next acceptor, then serves its connection itself.

  @testdata Path.expand("../../../native/droplet_core/testdata", __DIR__)
  @head_timeout 10_000
  @reasons %{200 => "OK", 302 => "Found", 400 => "Bad Request", 401 => "Unauthorized"}
  @reasons Map.merge(@reasons, %{
             403 => "Forbidden",
             404 => "Not Found",
             429 => "Too Many Requests"
           })

  @doc "The CA that signed the TLS certificate (the Rust tests' test CA)."
  def ca_file, do: Path.join(@testdata, "ca.pem")

  @doc "Listens on 127.0.0.1 and starts accepting; returns `{:ok, url}`."
  def start(sup, server, opts) do
    mod = if opts[:tls], do: :ssl, else: :gen_tcp
    {:ok, _} = Application.ensure_all_started(if opts[:tls], do: :ssl, else: :kernel)

    tls =
      if opts[:tls],
        do: [
          certfile: Path.join(@testdata, "server.pem"),
          keyfile: Path.join(@testdata, "server.key"),
          # A client refusing the certificate is a case tests provoke.
          log_level: :warning
        ],
        else: []

    sock_opts =
      [:binary, packet: :http_bin, active: false, reuseaddr: true, ip: {127, 0, 0, 1}] ++
        [nodelay: true, backlog: 1024] ++ tls

    with {:ok, listen} <- mod.listen(opts[:port], sock_opts),
         {:ok, {_, port}} <- sockname(mod, listen) do
      ctx = %{mod: mod, listen: listen, sup: sup, server: server, idle: opts[:keep_alive_timeout]}
      start_acceptor(ctx)
      scheme = if opts[:tls], do: "https", else: "http"
      {:ok, "#{scheme}://127.0.0.1:#{port}"}
    end
  end

  defp sockname(:gen_tcp, listen), do: :inet.sockname(listen)
  defp sockname(:ssl, listen), do: :ssl.sockname(listen)

  defp start_acceptor(ctx),
    do: Task.Supervisor.start_child(ctx.sup, fn -> accept(ctx) end, shutdown: :brutal_kill)

  defp accept(ctx) do
    case accept(ctx.mod, ctx.listen) do
      {:ok, sock} ->
        start_acceptor(ctx)
        with {:ok, sock} <- handshake(ctx.mod, sock), do: serve(ctx, sock)

      {:error, :closed} ->
        :ok

      {:error, _transient} ->
        # e.g. emfile under a benchmark: back off instead of spinning.
        Process.sleep(10)
        accept(ctx)
    end
  end

  defp accept(:gen_tcp, listen), do: :gen_tcp.accept(listen)
  defp accept(:ssl, listen), do: :ssl.transport_accept(listen)

  defp handshake(:gen_tcp, sock), do: {:ok, sock}
  defp handshake(:ssl, sock), do: :ssl.handshake(sock, @head_timeout)

  defp serve(ctx, sock) do
    with {:ok, {:http_request, method, {:abs_path, target}, version}} <-
           ctx.mod.recv(sock, 0, ctx.idle),
         {:ok, headers} <- headers(ctx.mod, sock, %{}) do
      [path | query] = String.split(target, "?", parts: 2)
      req = %{method: to_string(method), path: path, query: Enum.join(query)}
      req = Map.put(req, :authorization, headers["authorization"])
      answer = GenServer.call(ctx.server, {:request, req}, :infinity)
      Process.sleep(answer.delay_ms)
      # A request body is never read: its connection is not reused.
      keep? = keep_alive?(version, headers) and headers["content-length"] in [nil, "0"]

      if ctx.mod.send(sock, response(answer, keep?)) == :ok and keep?,
        do: serve(ctx, sock),
        else: ctx.mod.close(sock)
    else
      {:ok, _malformed} -> bad_request(ctx.mod, sock)
      {:error, _closed_or_idle} -> ctx.mod.close(sock)
    end
  end

  defp headers(mod, sock, acc) do
    case mod.recv(sock, 0, @head_timeout) do
      {:ok, {:http_header, _, _, name, value}} ->
        headers(mod, sock, Map.put(acc, String.downcase(name), value))

      {:ok, :http_eoh} ->
        {:ok, acc}

      other ->
        other
    end
  end

  defp keep_alive?(version, headers) do
    tokens = (headers["connection"] || "") |> String.downcase() |> String.split([",", " "])
    "close" not in tokens and (version != {1, 0} or "keep-alive" in tokens)
  end

  # A request too malformed to ask the server about: not logged, not counted.
  defp bad_request(mod, sock) do
    body = Jason.encode!(%{"id" => "bad_request", "message" => "Malformed request."})
    answer = %{status: 400, headers: [{"content-type", "application/json"}], body: body}
    mod.send(sock, response(answer, false))
    mod.close(sock)
  end

  defp response(%{status: status, headers: headers, body: body}, keep?) do
    reason = Map.get(@reasons, status, "Status")

    [
      ["HTTP/1.1 ", Integer.to_string(status), ?\s, reason, "\r\n"],
      Enum.map(headers, fn {name, value} -> [name, ": ", value, "\r\n"] end),
      ["content-length: ", Integer.to_string(IO.iodata_length(body)), "\r\n"],
      ["connection: ", if(keep?, do: "keep-alive", else: "close"), "\r\n\r\n"],
      body
    ]
  end
end
