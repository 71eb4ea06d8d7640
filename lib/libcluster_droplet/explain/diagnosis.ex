defmodule LibclusterDroplet.Explain.Diagnosis do
  @moduledoc false
  # The network side of explain (guides/troubleshooting.md, "The
  # diagnosis"): what answers at the address of a node that does not
  # connect. Runs in the caller of explain, every step bounded by a short
  # timeout, and never connects. It asks epmd for its names (a NAMES
  # request made here: :erl_epmd.names/1 has no timeout and only asks this
  # VM's port), then starts a handshake at the distribution port as a
  # hidden node and stops at the challenge, which carries the answering
  # node's name, before any cookie matters.

  import Bitwise

  alias LibclusterDroplet.{Explain, NodeName}
  alias LibclusterDroplet.Explain.Report

  @default_timeout 1_000
  @concurrency 32
  @max_diagnosed 128
  # DFLAG_PUBLISHED: without it the connection would be a visible one.
  @published 0x1
  # OTP 25's default distribution flags, for a release without
  # :erts_internal.get_dflags/0.
  @otp25_flags 55_966_662_588

  @typedoc "What epmd and the distribution port at a node's address answered."
  @type probes :: %{
          epmd_port: :inet.port_number(),
          epmd: {:ok, [{String.t(), :inet.port_number()}]} | {:error, term()},
          dist_port: :inet.port_number() | nil,
          dist: {:node, String.t()} | {:status, String.t()} | {:error, term()} | nil
        }

  # `:probe_timeout` is per connection and per answer; nodes past
  # `:max_diagnosed` are not diagnosed.
  @type opts :: [
          probe_timeout: pos_integer(),
          epmd_port: :inet.port_number(),
          dist_port: :inet.port_number(),
          max_diagnosed: pos_integer()
        ]

  # Diagnoses the entries that need it, @concurrency at a time.
  @spec run(Report.t(), opts()) :: Report.t()
  def run(%Report{} = report, opts \\ []) do
    max = Keyword.get(opts, :max_diagnosed, @max_diagnosed)
    timeout = Keyword.get(opts, :probe_timeout, @default_timeout)
    all = to_diagnose(report)

    findings =
      all
      |> Enum.take(max)
      |> Task.async_stream(
        fn %{verdict: %{node: node} = v} = e ->
          {node, conclude(node, probe(node, v.address, opts), e.stage == :connect_failed)}
        end,
        max_concurrency: @concurrency,
        # Each step is bounded by the timeout; this only guards against a hang.
        timeout: 5 * timeout + 1_000,
        on_timeout: :kill_task,
        ordered: false
      )
      |> Enum.flat_map(fn
        {:ok, found} -> [found]
        {:exit, _} -> []
      end)
      |> Map.new()

    report = put_findings(report, findings)
    note = "diagnosed #{max} of the #{length(all)} nodes that did not connect (max_diagnosed)"
    if length(all) <= max, do: report, else: %{report | checks: report.checks ++ [{:info, note}]}
  end

  # The entries to diagnose: connects failed or in flight, or candidates.
  def to_diagnose(%Report{entries: entries}),
    do: Enum.filter(entries, &(&1.stage in [:connect_failed, :connecting, :candidate]))

  def put_findings(%Report{} = report, findings) do
    entries =
      Enum.map(report.entries, &%{&1 | finding: Map.get(findings, &1.verdict.node, &1.finding)})

    %{report | entries: entries}
  end

  @doc """
  What the diagnosis of the node `expected` found from its `probes`. The
  distribution port's answer comes first (a connect uses it); epmd's says
  what runs when it does not answer. A node answering under the expected
  name while connects fail (`connect_failed?`) most likely has another cookie.

      iex> alias LibclusterDroplet.Explain.Diagnosis
      iex> Diagnosis.conclude(:"app@10.0.0.3", %{epmd_port: 4369, epmd: {:ok, [{"web", 9100}]}, dist_port: 9100,
      ...>   dist: {:node, "web@10.0.0.3"}}, true)
      {:other_node, "web@10.0.0.3", 9100}
      iex> Diagnosis.conclude(:"app@10.0.0.3", %{epmd_port: 4369, epmd: {:ok, [{"web", 9100}]}, dist_port: nil, dist: nil}, true)
      {:not_registered, [{"web", 9100}]}
      iex> Diagnosis.conclude(:"app@10.0.0.3", %{epmd_port: 4369, epmd: {:error, :refused}, dist_port: 9100, dist: {:node, "app@10.0.0.3"}}, true)
      {:cookie_mismatch, 9100}
  """
  @spec conclude(node(), probes(), boolean()) :: Explain.finding()
  def conclude(expected, probes, connect_failed?) do
    expected = Atom.to_string(expected)
    port = probes.dist_port

    case probes.dist do
      {:node, ^expected} ->
        if connect_failed?, do: {:cookie_mismatch, port}, else: {:answers, expected, port}

      {:node, other} ->
        {:other_node, other, port}

      {:status, status} when status in ["nok", "alive", "ok_simultaneous"] ->
        {:busy, status}

      {:status, status} ->
        {:refused, status}

      {:error, :not_distribution} ->
        {:not_distribution, port}

      unanswered ->
        why = with {:error, why} <- unanswered, do: why, else: (_ -> :not_tried)
        conclude_epmd(basename(expected), probes, why)
    end
  end

  defp conclude_epmd(basename, %{epmd: {:ok, names}}, why) do
    case List.keyfind(names, basename, 0) do
      {_, port} -> {:dist_closed, port, why}
      nil -> {:not_registered, names}
    end
  end

  defp conclude_epmd(_basename, %{epmd: {:error, epmd_why}} = probes, why),
    do:
      {:nothing_answers, {probes.epmd_port, epmd_why},
       probes.dist_port && {probes.dist_port, why}}

  # Asks epmd and the distribution port at `address` about `node`.
  @spec probe(node(), String.t(), opts()) :: probes()
  def probe(node, address, opts \\ []) do
    timeout = Keyword.get(opts, :probe_timeout, @default_timeout)
    epmd_port = epmd_port(opts)

    case :inet.parse_strict_address(String.to_charlist(address)) do
      {:ok, ip} ->
        epmd = epmd_names(ip, epmd_port, timeout)
        dist_port = dist_port(opts, basename(node), epmd)
        dist = if dist_port, do: handshake(ip, dist_port, timeout, explain_name())
        %{epmd_port: epmd_port, epmd: epmd, dist_port: dist_port, dist: dist}

      {:error, _} ->
        %{epmd_port: epmd_port, epmd: {:error, :invalid_address}, dist_port: nil, dist: nil}
    end
  end

  # `:epmd_port`, else this VM's `-epmd_port` (which ERL_EPMD_PORT sets at
  # boot), else ERL_EPMD_PORT, else 4369.
  def epmd_port(opts \\ []) do
    Keyword.get(opts, :epmd_port) || init_port(:epmd_port) ||
      port(System.get_env("ERL_EPMD_PORT")) || 4369
  end

  # What this node itself would connect to: the distribution port given, the
  # one port of a node without epmd, the port epmd lists, a pinned port.
  defp dist_port(opts, basename, epmd) do
    listed =
      with {:ok, names} <- epmd,
           {_, port} <- List.keyfind(names, basename, 0),
           do: port,
           else: (_ -> nil)

    Keyword.get(opts, :dist_port) || init_port(:erl_epmd_port) || listed || pinned_port()
  end

  defp pinned_port do
    min = Application.get_env(:kernel, :inet_dist_listen_min)
    if is_integer(min) and min == Application.get_env(:kernel, :inet_dist_listen_max), do: min
  end

  defp init_port(flag) do
    case :init.get_argument(flag) do
      {:ok, [[value | _] | _]} -> port(to_string(value))
      _ -> nil
    end
  end

  defp port(text) when is_binary(text) do
    case Integer.parse(text) do
      {port, ""} when port in 1..65_535 -> port
      _ -> nil
    end
  end

  defp port(_none), do: nil

  # epmd's NAMES request at `ip`:`port`.
  @spec epmd_names(:inet.ip_address(), :inet.port_number(), pos_integer()) ::
          {:ok, [{String.t(), :inet.port_number()}]} | {:error, term()}
  def epmd_names(ip, port, timeout) do
    deadline = now() + timeout

    with_connection(ip, port, [packet: :raw], timeout, fn socket ->
      with :ok <- :gen_tcp.send(socket, <<1::16, ?n>>),
           {:ok, <<_epmd_port::32, text::binary>>} <- read_all(socket, deadline, "") do
        {:ok, parse_names(text)}
      else
        {:ok, _short} -> {:error, :not_epmd}
        {:error, _} = error -> error
      end
    end)
  end

  # Runs `fun` on a connection to `ip`:`port`, closed afterwards;
  # `{:error, reason}` when none could be made.
  defp with_connection(ip, port, options, timeout, fun) do
    case :gen_tcp.connect(ip, port, [family(ip), :binary, active: false] ++ options, timeout) do
      {:ok, socket} ->
        try do
          fun.(socket)
        after
          :gen_tcp.close(socket)
        end

      {:error, reason} ->
        {:error, socket_error(reason)}
    end
  end

  # epmd answers and closes the connection.
  defp read_all(socket, deadline, acc) do
    case :gen_tcp.recv(socket, 0, max(deadline - now(), 0)) do
      {:ok, data} -> read_all(socket, deadline, acc <> data)
      {:error, :closed} -> {:ok, acc}
      {:error, reason} -> {:error, socket_error(reason)}
    end
  end

  defp parse_names(text) do
    for line <- String.split(text, "\n"),
        [_, name, port] <- [Regex.run(~r/\Aname (\S+) at port (\d+)\z/, line)],
        do: {name, String.to_integer(port)}
  end

  # Starts a handshake with `ip`:`port` as the hidden node `from` and stops
  # before the cookie matters: {:node, name} (from the challenge),
  # {:status, status} (refused), {:error, :refused | :timeout} (nothing
  # accepted the connection) or {:error, :not_distribution}.
  @spec handshake(:inet.ip_address(), :inet.port_number(), pos_integer(), String.t()) ::
          {:node, String.t()} | {:status, String.t()} | {:error, term()}
  def handshake(ip, port, timeout, from) do
    with_connection(ip, port, [packet: 2], timeout, fn socket ->
      send_name(socket, from)

      case :gen_tcp.recv(socket, 0, timeout) do
        {:ok, "s" <> status} when status in ["ok", "ok_simultaneous"] ->
          challenge(socket, timeout)

        {:ok, "s" <> status} ->
          {:status, status}

        _ ->
          {:error, :not_distribution}
      end
    end)
  end

  # The handshake's send_name, in the format of OTP 23 and later, with
  # this VM's own distribution flags minus "published", and creation 0.
  defp send_name(socket, from) do
    :gen_tcp.send(socket, <<?N, flags()::64, 0::32, byte_size(from)::16, from::binary>>)
  end

  defp challenge(socket, timeout) do
    case :gen_tcp.recv(socket, 0, timeout) do
      {:ok,
       <<?N, _flags::64, _challenge::32, _creation::32, len::16, name::binary-size(len),
         _::binary>>} ->
        {:node, name}

      # A node older than OTP 23.
      {:ok, <<?n, _version::16, _flags::32, _challenge::32, name::binary>>} ->
        {:node, name}

      _ ->
        {:error, :not_distribution}
    end
  end

  defp flags do
    default =
      try do
        # Internal, but what this VM itself offers when it connects.
        :erts_internal |> apply(:get_dflags, []) |> elem(1)
      rescue
        _ -> @otp25_flags
      end

    band(default, bnot(@published))
  end

  # A hidden node's name on this node's host; no such node ever connects.
  defp explain_name do
    host = NodeName.host(Node.self())
    "libcluster_droplet_explain@" <> if(host in ["", "nohost"], do: "localhost", else: host)
  end

  defp basename(node), do: node |> to_string() |> String.split("@", parts: 2) |> hd()

  defp family(ip) when tuple_size(ip) == 8, do: :inet6
  defp family(_ip), do: :inet

  defp socket_error(:econnrefused), do: :refused
  defp socket_error(other), do: other

  defp now, do: System.monotonic_time(:millisecond)
end
