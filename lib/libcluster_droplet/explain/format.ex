defmodule LibclusterDroplet.Explain.Format do
  @moduledoc false
  # A report as text: the checks, a table of one row per droplet and a
  # summary. The only module that knows about columns, and the words for
  # every stage, check result, connect error and finding.

  alias LibclusterDroplet.Explain.{Entry, Facts, Report}
  alias LibclusterDroplet.{Filters, HealthCheck, Pipeline, Plan}

  @columns ["DROPLET", "STATUS", "ADDRESS", "NODE", "STAGE", "DETAIL"]

  def format(%Report{} = report) do
    where =
      if report.mode == :offline,
        do: ", listed from this machine",
        else: " on #{inspect(report.self)}"

    title = "libcluster_droplet: topology #{inspect(report.topology)}#{where}"
    checks = for {level, text} <- report.checks, do: "  #{pad(label(level), 8)}#{text}"

    rows =
      for %Entry{verdict: v} = e <- report.entries do
        status = to_string(v.status)
        node = to_string(v.node || "-")
        [v.name, status, v.address || "-", node, stage_label(e.stage), detail(e, report.facts)]
      end

    table =
      if rows == [],
        do: ["  (no droplets in the last view)"],
        else: table([@columns | rows])

    Enum.join([title, "" | checks] ++ ["" | table] ++ ["", "  " <> summary(report)], "\n")
  end

  defp table(rows) do
    widths =
      rows
      |> Enum.map(fn row -> row |> Enum.drop(-1) |> Enum.map(&String.length/1) end)
      |> Enum.zip_with(&Enum.max/1)

    Enum.map(rows, fn row ->
      {cells, [last]} = Enum.split(row, -1)
      line = cells |> Enum.zip(widths) |> Enum.map_join("", fn {cell, w} -> pad(cell, w + 2) end)
      String.trim_trailing("  " <> line <> last)
    end)
  end

  defp pad(text, width), do: String.pad_trailing(text, width)

  defp label(:warning), do: "WARNING"
  defp label(level), do: Atom.to_string(level)

  def summary(%Report{entries: entries}) do
    counts = Enum.frequencies_by(entries, & &1.stage)

    by_stage =
      for stage <- LibclusterDroplet.Explain.stages(),
          n = Map.get(counts, stage),
          do: "#{n} #{stage_label(stage)}"

    "#{length(entries)} droplets" <>
      if(by_stage == [], do: "", else: ": " <> Enum.join(by_stage, ", "))
  end

  def describe_error(topology, :not_running),
    do:
      "no Cluster.Strategy.Droplet runs topology #{inspect(topology)} on #{inspect(Node.self())}"

  def describe_error(topology, {:no_answer, timeout}),
    do: "the strategy of topology #{inspect(topology)} did not answer within #{timeout} ms"

  def stage_label(stage), do: stage |> Atom.to_string() |> String.replace("_", " ")

  def detail(%Entry{stage: :outside_filters, verdict: v}, _facts),
    do: Enum.map_join(v.why, "; ", &Filters.describe/1)

  def detail(%Entry{stage: :not_active, verdict: v}, _facts),
    do: "status #{v.status}: only active droplets are selected"

  def detail(%Entry{stage: :no_address}, facts), do: "no #{network(facts.config)} address"

  def detail(%Entry{stage: :unusable_name, verdict: v}, _facts),
    do: describe_unusable(v.why, v.address)

  def detail(%Entry{stage: :duplicate}, _facts),
    do: "an earlier droplet of the listing has the same node name (same basename and address)"

  def detail(%Entry{stage: :this_node}, _facts), do: ""

  def detail(%Entry{stage: :not_joining}, _facts),
    do: "this node is not among the selected droplets, so it connects to no one (see above)"

  def detail(%Entry{stage: :health_failed} = e, facts) do
    case e.probe do
      %{failed: n} = probe -> "#{describe_probe(probe, facts)}, #{n} in a row"
      nil -> "failed its health check: #{describe_probe_error(elem(e.verdict.health, 1))}"
    end
  end

  def detail(%Entry{stage: :pending} = e, facts),
    do:
      join([
        probe_note(e, facts),
        "selected; its connect has not started yet " <>
          "(at most #{LibclusterDroplet.Connector.max_in_flight()} run at once)"
      ])

  def detail(%Entry{stage: :connecting} = e, facts),
    do: join([probe_note(e, facts), "a connect is in flight", finding_text(e)])

  def detail(%Entry{stage: :connect_failed, connect: c} = e, facts) do
    next =
      cond do
        e.verdict.node in facts.in_flight -> "a retry is in flight"
        c.retry_at > facts.now -> "next attempt in #{duration(c.retry_at - facts.now)}"
        true -> "next attempt due"
      end

    attempts =
      if c.count == 1, do: "1 connect failed", else: "#{c.count} connects failed in a row"

    join([
      probe_note(e, facts),
      "#{attempts} (#{describe_connect_error(c.reason)}), #{next}",
      finding_text(e)
    ])
  end

  def detail(%Entry{stage: :connected, since: since} = e, facts) do
    since = if since, do: "since #{timestamp(since)} (#{ago(facts.now, since)})", else: ""
    join([since, strikes_note(e)])
  end

  def detail(%Entry{stage: :candidate} = e, facts),
    do: join([probe_note(e, facts), finding_text(e) || "not diagnosed"])

  defp join(parts), do: parts |> Enum.reject(&(&1 in [nil, ""])) |> Enum.join("; ")

  defp probe_note(%Entry{probe: %{result: :ok} = probe}, facts), do: describe_probe(probe, facts)
  defp probe_note(_entry, _facts), do: nil

  # A connected node that fails its checks stays managed until the strikes run out.
  defp strikes_note(%Entry{probe: %{result: {:error, reason}, failed: n}}),
    do:
      "failed its last #{n} health check(s) (#{describe_probe_error(reason)}); " <>
        "no longer managed after #{Plan.probe_strikes()} in a row, never disconnected for it"

  defp strikes_note(_entry), do: nil

  defp finding_text(%Entry{finding: finding} = e), do: finding && describe_finding(finding, e)

  # Why this node joins no one: the name its droplet needs (found by its
  # address), then up to 4 others.
  def not_listed(verdicts, self) do
    targets = for {node, _address} <- Pipeline.targets(verdicts), do: node

    expected =
      case Pipeline.own_name(verdicts, self) do
        nil ->
          "no listed droplet has this node's address; the strategy computes names such as " <>
            names(targets)

        own ->
          "its droplet, found by its address, is named #{inspect(own)}; others are " <>
            names(List.delete(targets, own))
      end

    "this node #{inspect(self)} is not among the #{length(targets)} selected droplets, " <>
      "so it joins no one; " <> expected
  end

  def names([]), do: "none"
  def names(nodes), do: nodes |> Enum.take(4) |> Enum.map_join(", ", &inspect/1)

  def network(config) do
    ip = if Map.get(config, :ipv6, false), do: "IPv6", else: "IPv4"
    "#{Map.get(config, :network, :private)} #{ip}"
  end

  def describe_unusable({:invalid_basename, basename}, _address) do
    "#{inspect(basename)} cannot be the name part of a node name (only ASCII letters, digits, " <>
      "'_' and '-'); set :node_basename"
  end

  def describe_unusable({:invalid_address, _basename}, address),
    do: "#{inspect(address)} is not an IP address"

  @doc """
  A health check's result in words, with the time it took.

      iex> facts = %LibclusterDroplet.Explain.Facts{config: %{health_check: {:tcp, port: 4000, timeout: 500}}}
      iex> LibclusterDroplet.Explain.Format.describe_probe(%{result: {:error, :refused}, took_ms: 3, exact?: false}, facts)
      "port 4000: connection refused (in at most 3 ms)"
      iex> LibclusterDroplet.Explain.Format.describe_probe(%{result: :ok, took_ms: 0.42, exact?: true}, facts)
      "port 4000 answered in 0.42 ms"
  """
  def describe_probe(probe, %Facts{config: config}) do
    what = if check = config[:health_check], do: HealthCheck.describe(check), else: "the check"

    case probe do
      %{result: :ok, took_ms: ms} ->
        "#{what} answered in #{ms(ms)}"

      %{result: {:error, :timeout}, took_ms: ms} ->
        "#{what}: no answer within #{ms(ms)}"

      %{result: {:error, reason}, took_ms: ms, exact?: exact?} ->
        took = if exact?, do: "in #{ms(ms)}", else: "in at most #{ms(ms)}"
        "#{what}: #{describe_probe_error(reason)} (#{took})"
    end
  end

  def describe_probe_error(:refused), do: "connection refused"
  def describe_probe_error(:timeout), do: "no answer"
  def describe_probe_error(:unreachable), do: "host unreachable"
  def describe_probe_error(:invalid_address), do: "not an IP address"
  def describe_probe_error(:not_checked), do: "not checked"
  def describe_probe_error({:io, detail}) when is_binary(detail), do: detail
  def describe_probe_error(other), do: inspect(other)

  def describe_connect_error(false), do: "net_kernel could not set up the connection"
  def describe_connect_error(:ignored), do: "this node is not alive (distribution not started)"
  def describe_connect_error(:timeout), do: "the connect did not return in time and was given up"

  def describe_connect_error(:not_connected),
    do: "the connect returned true but the node is not connected"

  def describe_connect_error({:exit, reason}),
    do: "the connect task exited: #{inspect(reason, limit: 5, printable_limit: 64)}"

  def describe_connect_error(other), do: inspect(other, limit: 5, printable_limit: 64)

  @doc """
  A finding in words, with what to do about it.

      iex> v = %LibclusterDroplet.Verdict{name: "web-3", status: :active, stage: :selected, node: :"app@10.0.0.3", address: "10.0.0.3"}
      iex> LibclusterDroplet.Explain.Format.describe_finding({:not_registered, [{"web", 9100}]}, %LibclusterDroplet.Explain.Entry{verdict: v})
      "runs `web@10.0.0.3` (epmd lists web at port 9100, no app); the strategy expects `app@10.0.0.3`: set node_basename: \\"web\\" or fix RELEASE_NODE"
  """
  def describe_finding(finding, %Entry{verdict: %{node: node, address: address}}),
    do: finding(finding, node, address)

  defp finding({:cookie_mismatch, port}, node, address) do
    "`#{node}` answers at #{host_port(address, port)} but the handshake fails: " <>
      "most likely a cookie mismatch (set the same RELEASE_COOKIE on every node)"
  end

  defp finding({:answers, answering, port}, _node, address),
    do:
      "`#{answering}` answers at #{host_port(address, port)} (the cookie is not checked from here)"

  defp finding({:other_node, other, port}, node, address) do
    "runs `#{other}` (it answered at #{host_port(address, port)}); " <>
      "the strategy expects `#{node}`: " <> fix_name(other, node)
  end

  defp finding({:not_registered, []}, node, address) do
    "epmd at #{address} answers but lists no node: is the release running, with distribution " <>
      "started (expected `#{node}`)?"
  end

  defp finding({:not_registered, names}, node, address) do
    [basename | _] = node |> Atom.to_string() |> String.split("@", parts: 2)
    running = Enum.map_join(names, ", ", fn {name, _} -> "`#{name}@#{address}`" end)
    listed = Enum.map_join(names, ", ", fn {name, port} -> "#{name} at port #{port}" end)
    {suggestion, _} = Enum.find(names, hd(names), fn {name, _} -> not temporary_name?(name) end)

    "runs #{running} (epmd lists #{listed}, no #{basename}); the strategy expects `#{node}`: " <>
      fix_name("#{suggestion}@#{address}", node)
  end

  defp finding({:dist_closed, port, why}, _node, address) do
    "epmd lists the node at port #{port}, but #{host_port(address, port)} #{socket_error(why)}: " <>
      "open the distribution port between the droplets (see Firewalls and ports)"
  end

  defp finding({:nothing_answers, {epmd_port, epmd_why}, dist}, _node, address) do
    dist_text = with {port, why} <- dist, do: ", distribution port #{port} #{socket_error(why)}"

    "nothing answers at #{address}: epmd port #{epmd_port} #{socket_error(epmd_why)}#{dist_text}; " <>
      "the droplet is down, its release is not running, or a firewall drops these ports"
  end

  defp finding({:not_distribution, port}, _node, address) do
    "#{host_port(address, port)} accepts TCP but does not speak Erlang distribution " <>
      "(TLS distribution, or another service on that port)"
  end

  defp finding({:refused, status}, node, _address) do
    "`#{node}` refuses the handshake (status #{status}): net_kernel:allow/1 on it, " <>
      "or a release it cannot talk to"
  end

  defp finding({:busy, status}, _node, _address),
    do: "another handshake with the node was in progress (status #{status}); run explain again"

  # Remote consoles and rpc calls of a release register such names beside the node.
  defp temporary_name?(name), do: String.match?(name, ~r/^(rem|rpc|maint|remsh)[-_]/)

  defp fix_name(running, expected) do
    [run_base, run_host] = String.split(to_string(running), "@", parts: 2)
    [exp_base, exp_host] = expected |> Atom.to_string() |> String.split("@", parts: 2)

    if run_host != exp_host,
      do:
        "name the node after the droplet's address (RELEASE_NODE=#{run_base}@#{exp_host})" <>
          if(run_base != exp_base, do: " and set node_basename: #{inspect(run_base)}", else: ""),
      else: "set node_basename: #{inspect(run_base)} or fix RELEASE_NODE"
  end

  defp socket_error(:refused), do: "refused the connection"
  defp socket_error(:timeout), do: "did not answer in time"
  defp socket_error(:not_tried), do: "was not tried"
  defp socket_error(other), do: "failed (#{inspect(other)})"

  defp host_port(address, port) do
    if String.contains?(address, ":"), do: "[#{address}]:#{port}", else: "#{address}:#{port}"
  end

  ## Times

  def timestamp(unix_ms) do
    unix_ms
    |> DateTime.from_unix!(:millisecond)
    |> DateTime.truncate(:second)
    |> DateTime.to_iso8601()
  end

  def ago(now, at), do: "#{duration(max(now - at, 0))} ago"

  @doc """
  A duration in ms, in words.

      iex> LibclusterDroplet.Explain.Format.duration(1_234)
      "1.2 s"
      iex> LibclusterDroplet.Explain.Format.duration(125_000)
      "2 min 5 s"
  """
  def duration(ms) when ms < 1_000, do: "#{ms} ms"
  def duration(ms) when ms < 60_000, do: "#{Float.round(ms / 1000, 1)} s"

  def duration(ms) when ms < 3_600_000,
    do: "#{div(ms, 60_000)} min #{div(rem(ms, 60_000), 1000)} s"

  def duration(ms), do: "#{div(ms, 3_600_000)} h #{div(rem(ms, 3_600_000), 60_000)} min"

  defp ms(ms) when is_integer(ms), do: "#{ms} ms"
  defp ms(ms) when is_float(ms) and ms >= 10, do: "#{round(ms)} ms"
  defp ms(ms) when is_float(ms), do: "#{Float.round(ms, 2)} ms"
end
