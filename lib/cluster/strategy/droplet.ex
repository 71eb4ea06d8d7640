defmodule Cluster.Strategy.Droplet do
  @moduledoc """
  A libcluster strategy that forms a cluster out of DigitalOcean droplets.

  It polls `GET /v2/droplets` (optionally filtered by tags or name, GPU
  droplets included or alone; droplets outside the `:regions` or `:vpc`
  asked for set apart by `LibclusterDroplet.Plan.filter/3`), picks
  each active droplet's private or public, IPv4 or IPv6 address, optionally
  checks that a TCP port answers there, and connects to the nodes named
  `basename@address`; nodes it manages whose droplet went away or stopped
  being active are removed, and a node that keeps failing the health check
  is no longer managed.

      config :libcluster,
        topologies: [
          droplets: [
            strategy: Cluster.Strategy.Droplet,
            config: [token: {:system, "DIGITALOCEAN_TOKEN"}, tag_name: "web", node_basename: "app"]
          ]
        ]

  See `Cluster.Strategy.Droplet.Config` for every option and its default.

  ## Without libcluster

  The strategy also runs on its own, with libcluster's default connect,
  disconnect and list functions:

      children = [
        {Cluster.Strategy.Droplet, topology: :droplets, config: [token: {:file, "/run/secrets/do_token"}, tag_name: "web"]}
      ]

  ## The cycle

  Three activities, each with its own timer, tagged with a reference so
  that a stale timer message is ignored:

    * **the tick** (`:tick`), always armed: every tick arms the next one
      before anything else, so no path leaves the process without one. A
      tick starts an API poll unless one is in flight, a rate-limit floor
      holds, or a live leader polls for this node;
    * **an API poll**: `:listing` (NIF thread) → `:probing` (NIF thread,
      with `:health_check`) → apply. Its watchdog (`:poll_watchdog`)
      covers both stages: a lost reply fails the poll instead of stalling
      it, and cancels the NIF call it gave up on;
    * **a share check**: a leader's share, health-checked like a listing
      (watchdog `:check_watchdog`, which also cancels the probes it gives
      up on) and then applied. A share arriving meanwhile waits as the
      next one (only the newest is kept).

  Applying a view (`LibclusterDroplet.Plan`) yields the desired set; views
  are ordered by the time their listing started, so an older one never
  undoes a newer one. Then, in this order: the leader sends its share (it
  does so as soon as its listing arrives, before probing), managed nodes
  no longer wanted are removed, and the wanted nodes not connected are
  handed to `LibclusterDroplet.Connector`, whose connects run in tasks.
  Nothing the process does waits on the network, so a poll, a share, a
  removal, a takeover or `:sys.get_state/1` never waits for a connect.

  ## Removal

  Disconnecting a node from one side makes OTP's `global` cut healthy
  nodes apart (`prevent_overlapping_partitions`). So a managed node that is
  no longer wanted and still connected is asked to leave by itself
  (`:global.disconnect/0` on it, see `LibclusterDroplet.Membership.request_leave/1`),
  which removes it alone. If it is still connected
  #{LibclusterDroplet.Removal.leave_grace()} ms later it is disconnected
  with the `disconnect` MFA, and a failed disconnect is retried (every
  `polling_interval`) until it succeeds. See `LibclusterDroplet.Removal`. A node whose own name is not among the
  selected droplets joins no one and, if it was in the cluster, leaves it
  (unless `require_listed: false`).

  ## When the API fails

  Membership is left exactly as it is, one warning names the class of the
  error (see `LibclusterDroplet.Error`), and the next poll is scheduled with
  exponential backoff and jitter; the first success returns to
  `polling_interval`. After a 429, nothing is sent before `retry-after` (or
  `ratelimit-reset` when no request remains). The managed set, the nodes
  being removed and the backoff survive a restart of the strategy
  (`LibclusterDroplet.ManagedStore`).

  ## When nodes don't connect

  `explain/2` tells, droplet by droplet, where each one stopped (outside
  the filters, not active, no address, an unusable name, the health check,
  the connect, with a diagnosis of what answers at its address) and checks
  this node itself; `mix libcluster_droplet.explain` does the same from a
  developer's machine. At the default log level, a node that keeps failing
  its health check or its connects is logged once, with a warning, after
  #{LibclusterDroplet.NodeWatch.warn_after()} failures in a row, and once
  more, with an info line, when it recovers.

  ## Telemetry

  When `:telemetry` is loaded, besides libcluster's `[:libcluster,
  :connect_node | :disconnect_node, :ok | :error]`, the strategy emits
  `[:libcluster_droplet, :poll, :start]` (`%{system_time: t}`),
  `[:libcluster_droplet, :poll, :stop]` (`%{duration: native, requests: n,
  listed: n, selected: n, healthy: n, connected: n}`: droplets listed,
  nodes selected other than this one, of those the ones passing the health
  check (all without one) and the ones connected when the poll ends;
  metadata `topology`, `droplets`, `nodes`) and
  `[:libcluster_droplet, :poll, :error]` (`%{duration: native}`, metadata
  `topology`, `reason` (the error class), `failures`).

  ## One poller per cluster

  With `coordinate: true` (the default) and distribution running, the
  connected nodes do not each poll at full rate: the lowest-named one polls
  and shares what it found with the others, which poll only at a slow
  safety interval and take over when it goes away. See
  `LibclusterDroplet.Coordination` and `LibclusterDroplet.Share`.
  """

  use GenServer

  alias Cluster.Strategy.Droplet.Config

  alias LibclusterDroplet.{
    Connector,
    Coordination,
    Error,
    Explain,
    HealthCheck,
    Listing,
    Log,
    ManagedStore,
    Membership,
    NodeWatch,
    Plan,
    Removal,
    Schedule,
    Share,
    Telemetry,
    Token
  }

  @libcluster? Code.ensure_loaded?(Cluster.Strategy)
  if @libcluster?, do: @behaviour(Cluster.Strategy)

  @default_connect {:net_kernel, :connect_node, []}
  @default_disconnect {:erlang, :disconnect_node, []}
  @default_list_nodes {:erlang, :nodes, [:connected]}

  # A reply lost in the NIF would stall a poll forever; this long after the
  # NIF's own deadline the poll is abandoned and counted as a failure.
  @watchdog_grace 5_000

  @enforce_keys [:topology, :config]
  defstruct topology: nil,
            connect: @default_connect,
            disconnect: @default_disconnect,
            list_nodes: @default_list_nodes,
            config: nil,
            store_key: nil,
            tasks: nil,
            managed: MapSet.new(),
            removing: %{},
            strikes: %{},
            connector: %Connector{},
            poll: nil,
            check: nil,
            pending_share: nil,
            view: nil,
            view_applied_at: nil,
            selected: MapSet.new(),
            abandoned: %{},
            timers: %{},
            failures: 0,
            not_before: nil,
            next_poll_at: nil,
            rate_limit: nil,
            polls: 0,
            stretch: 1,
            listed?: nil,
            warned: MapSet.new(),
            coordination: %Coordination{},
            last_view: nil,
            watch: %NodeWatch{},
            last_poll_at: nil,
            last_error: nil

  @typedoc """
  The strategy's state.

    * `managed`: the nodes this strategy wants connected (it connects and
      removes only those); `removing`: nodes asked to leave or awaiting a
      disconnect retry, with when it started;
    * `strikes`: consecutive failed probes of managed nodes;
    * `connector`: connects in flight and per-node backoff;
    * `poll`: the API poll in flight, if any; `check`: the share being
      health-checked; each holds its NIF call (`LibclusterDroplet.Call`),
      which runs for as long as it is held; `pending_share`: the newest
      share waiting for it;
    * `view`: `{listed_at, seq}` of the last view applied (and
      `view_applied_at`, when, in monotonic time); `selected`: the nodes
      that view selected; `abandoned`: connects in flight to nodes no
      longer wanted, watched in case they succeed anyway;
    * `timers`: the armed timer of each purpose;
    * `failures`, `not_before`, `next_poll_at`, `rate_limit`: API backoff
      and rate limits; `stretch`: the factor of `polling_interval` while
      the token's budget keeps falling (`LibclusterDroplet.Schedule.stretch/3`);
    * `polls`: successful API polls; `listed?`: whether this node was
      among the selected droplets in the last view;
    * `coordination`: who polls for the cluster;
    * for `explain/2`: `last_view`, the droplets of the last view applied
      (compact, bounded by the listing), where it came from and when;
      `watch`, each node's last health probe and since when it is
      connected (`LibclusterDroplet.NodeWatch`, bounded by the view's
      nodes); `last_poll_at`, the Unix time of the last successful API
      poll; `last_error`, the class and message of the last failed one.
  """
  @type t :: %__MODULE__{
          topology: atom(),
          connect: Membership.mfa_tuple(),
          disconnect: Membership.mfa_tuple(),
          list_nodes: Membership.mfa_tuple(),
          config: Config.t(),
          store_key: ManagedStore.key() | nil,
          tasks: pid() | nil,
          managed: MapSet.t(node()),
          removing: Removal.removing(),
          strikes: Plan.strikes(),
          connector: Connector.t(),
          poll: map() | nil,
          check: map() | nil,
          pending_share: Share.t() | nil,
          view: {integer(), non_neg_integer()} | nil,
          view_applied_at: integer() | nil,
          selected: MapSet.t(node()),
          abandoned: %{reference() => node()},
          timers: %{atom() => {reference(), reference()}},
          failures: non_neg_integer(),
          not_before: integer() | nil,
          next_poll_at: integer() | nil,
          rate_limit: LibclusterDroplet.rate_limit() | nil,
          polls: non_neg_integer(),
          stretch: pos_integer(),
          listed?: boolean() | nil,
          warned: MapSet.t(term()),
          coordination: Coordination.t(),
          last_view:
            %{
              source: :listing | {:share, node()},
              listed_at: integer(),
              applied_at: integer(),
              droplets: [Explain.droplet()]
            }
            | nil,
          watch: NodeWatch.t(),
          last_poll_at: integer() | nil,
          last_error: {atom(), String.t()} | nil
        }

  @doc """
  The child spec, as libcluster's `use Cluster.Strategy` would define it.
  """
  if @libcluster?, do: @impl(Cluster.Strategy)
  @spec child_spec(term()) :: Supervisor.child_spec()
  def child_spec(args) do
    %{id: __MODULE__, type: :worker, start: {__MODULE__, :start_link, [args]}}
  end

  @doc """
  Starts the strategy.

  Takes either what `Cluster.Supervisor` passes, a one-element list holding
  a `%Cluster.Strategy.State{}`, or a keyword list with `:topology` (an
  atom, required), `:config`, and optionally `:connect`, `:disconnect`,
  `:list_nodes` (MFAs, libcluster's defaults) and `:name`.

  The config is validated here: a bad option raises `ArgumentError`.
  """
  if @libcluster?, do: @impl(Cluster.Strategy)
  @spec start_link([map()] | keyword()) :: GenServer.on_start()
  def start_link([%{topology: _, config: _} = libcluster_state]) do
    state =
      new_state!(
        Map.take(libcluster_state, [:topology, :connect, :disconnect, :list_nodes, :config])
      )

    GenServer.start_link(__MODULE__, state)
  end

  def start_link(opts) when is_list(opts) do
    unless Keyword.keyword?(opts) and is_atom(opts[:topology]) and opts[:topology] != nil do
      raise ArgumentError,
            "Cluster.Strategy.Droplet.start_link/1 expects [%Cluster.Strategy.State{}] or a keyword list " <>
              "with :topology (an atom) and :config"
    end

    {gen_opts, opts} = Keyword.split(opts, [:name])
    state = new_state!(Map.new(opts))
    GenServer.start_link(__MODULE__, state, gen_opts)
  end

  @doc """
  Explains, droplet by droplet, why this node is or is not connected to
  each node of the topology's last view, and checks this node itself.
  Run it on a node (in IEx, or `bin/app rpc "Cluster.Strategy.Droplet.explain(:droplets)"`).

  `topology` is the topology's name (the strategy is found by it, under
  libcluster's `Cluster.Supervisor` or not) or the strategy's pid. Returns
  `{:ok, report}` (a `LibclusterDroplet.Explain.Report`: one entry per
  droplet of the last listing or share applied, with the stage where it
  stopped, see `LibclusterDroplet.Explain`), and prints it as a table
  unless `print: false`; `format_explanation/1` renders a report.
  `{:error, :not_running}` when no strategy runs that topology on this
  node, `{:error, {:no_answer, timeout}}` when it did not answer in time.

  The strategy only hands over what it knows (a call bounded by `:timeout`,
  default 5,000 ms); the rest runs in the caller, so the strategy never
  waits for it. Nodes whose connects failed or are in flight are diagnosed
  over the network (`LibclusterDroplet.Explain.Diagnosis`): which names
  epmd lists at the address, and which node answers at the distribution
  port, each step bounded by `:probe_timeout` (default 1,000 ms), at most
  `:max_diagnosed` nodes (default 128), 32 at a time. `:epmd_port` and
  `:dist_port` override the ports asked (by default this VM's `-epmd_port`,
  which `ERL_EPMD_PORT` sets, or 4369; and the port this node connects to).
  Nothing connects: the handshake is stopped before the cookie is sent.
  """
  @spec explain(atom() | pid(), keyword()) ::
          {:ok, Explain.Report.t()} | {:error, :not_running | {:no_answer, timeout()}}
  def explain(topology, opts \\ []) do
    result =
      with {:ok, pid} <- whereis(topology),
           {:ok, facts} <- explain_facts(pid, Keyword.get(opts, :timeout, 5_000)) do
        report =
          %{facts | longnames?: longnames?()}
          |> Explain.report()
          |> Explain.Diagnosis.run(opts)

        {:ok, report}
      end

    if Keyword.get(opts, :print, true) do
      case result do
        {:ok, report} -> IO.puts(format_explanation(report))
        {:error, reason} -> IO.puts(describe_explain_error(topology, reason))
      end
    end

    result
  end

  @doc "Renders a report of `explain/2` as text: the checks, a table of the droplets, a summary."
  @spec format_explanation(Explain.Report.t()) :: String.t()
  def format_explanation(%Explain.Report{} = report), do: Explain.format(report)

  defp whereis(pid) when is_pid(pid), do: {:ok, pid}

  defp whereis(topology) when is_atom(topology) do
    case :persistent_term.get(explain_key(topology), nil) do
      pid when is_pid(pid) -> if Process.alive?(pid), do: {:ok, pid}, else: {:error, :not_running}
      nil -> {:error, :not_running}
    end
  end

  defp explain_facts(pid, timeout) do
    GenServer.call(pid, :explain_facts, timeout)
  catch
    :exit, {:timeout, _} -> {:error, {:no_answer, timeout}}
    :exit, _ -> {:error, :not_running}
  end

  defp longnames? do
    case :net_kernel.longnames() do
      longnames when is_boolean(longnames) -> longnames
      _ -> nil
    end
  end

  defp describe_explain_error(topology, :not_running),
    do:
      "no Cluster.Strategy.Droplet runs topology #{inspect(topology)} on #{inspect(Node.self())}"

  defp describe_explain_error(topology, {:no_answer, timeout}),
    do: "the strategy of topology #{inspect(topology)} did not answer within #{timeout} ms"

  defp new_state!(fields) do
    mfa = fn key, default ->
      case Map.get(fields, key) do
        {m, f, a} = mfa when is_atom(m) and is_atom(f) and is_list(a) ->
          mfa

        nil ->
          default

        other ->
          raise ArgumentError,
                "Cluster.Strategy.Droplet: #{key} must be an MFA tuple, got: #{inspect(other)}"
      end
    end

    %__MODULE__{
      topology: Map.fetch!(fields, :topology),
      connect: mfa.(:connect, @default_connect),
      disconnect: mfa.(:disconnect, @default_disconnect),
      list_nodes: mfa.(:list_nodes, @default_list_nodes),
      config: Config.new!(Map.get(fields, :config) || [])
    }
  end

  @impl true
  def init(%__MODULE__{} = state) do
    # Exits are trapped so that a normal shutdown runs terminate/2, which
    # erases the stored membership; a crash or a kill leaves it for the
    # next incarnation.
    Process.flag(:trap_exit, true)
    register_explain(state.topology)
    {:ok, tasks} = Task.Supervisor.start_link()
    key = ManagedStore.key(state.topology, Config.fingerprint(state.config))
    stored = ManagedStore.load(key)

    state = %{
      state
      | tasks: tasks,
        store_key: key,
        managed: stored.managed,
        removing: stored.removing,
        failures: stored.failures,
        not_before: stored.not_before,
        next_poll_at: stored.next_poll_at
    }

    state = enable_coordination(state)
    unix_now = System.system_time(:millisecond)

    wait =
      Enum.max([0, (stored.next_poll_at || 0) - unix_now, (stored.not_before || 0) - unix_now])

    # A predecessor that was backing off or waiting out a rate limit passes
    # that on: the first poll waits for it too.
    if wait == 0,
      do: {:ok, arm(state, :tick, state.config.polling_interval), {:continue, :poll}},
      else: {:ok, arm(state, :tick, wait)}
  end

  @impl true
  def handle_continue(:poll, state), do: {:noreply, start_api_poll(state)}

  @impl true
  def handle_info({:droplet_timer, purpose, ref}, state) do
    if match?({^ref, _}, Map.get(state.timers, purpose)),
      do: {:noreply, timer(purpose, %{state | timers: Map.delete(state.timers, purpose)})},
      else: {:noreply, state}
  end

  def handle_info(
        {:droplet_nif_list, ref, result, info},
        %{poll: %{stage: :listing, ref: ref}} = state
      ) do
    state = disarm(state, :poll_watchdog)

    case Listing.from_nif(result, info) do
      {:ok, listing} -> {:noreply, listed(listing, state)}
      {:error, reason} -> {:noreply, poll_failed(reason, Map.get(info, :rate_limit), state)}
    end
  end

  def handle_info(
        {:droplet_nif_probe, ref, results},
        %{poll: %{stage: :probing, ref: ref}} = state
      ) do
    state = disarm(state, :poll_watchdog)

    case results do
      {:error, reason} ->
        {:noreply, poll_failed(reason, nil, state)}

      results ->
        state = note_probes(state, state.poll, results)
        {:noreply, api_probed(HealthCheck.verdicts(state.poll.selection, results), state)}
    end
  end

  def handle_info({:droplet_nif_probe, ref, results}, %{check: %{ref: ref}} = state) do
    state = disarm(state, :check_watchdog)

    case results do
      {:error, reason} ->
        {:noreply, check_failed(reason, state)}

      results ->
        state = note_probes(state, state.check, results)
        {:noreply, share_probed(HealthCheck.verdicts(state.check.selection, results), state)}
    end
  end

  # A connect task's answer.
  def handle_info({ref, outcome}, state) when is_reference(ref) do
    cond do
      Connector.in_flight?(state.connector, ref) ->
        Process.demonitor(ref, [:flush])
        {:noreply, connect_done(ref, outcome, state)}

      Map.has_key?(state.abandoned, ref) ->
        Process.demonitor(ref, [:flush])
        {:noreply, abandoned_done(ref, outcome, state)}

      true ->
        {:noreply, state}
    end
  end

  def handle_info({:DOWN, ref, :process, _, reason}, state) do
    cond do
      ref == state.coordination.leader_ref ->
        {:noreply, leader_down(state)}

      Connector.in_flight?(state.connector, ref) ->
        {:noreply, connect_done(ref, {:error, {:exit, reason}}, state)}

      Map.has_key?(state.abandoned, ref) ->
        {:noreply, %{state | abandoned: Map.delete(state.abandoned, ref)}}

      true ->
        {:noreply, state}
    end
  end

  def handle_info({:EXIT, tasks, reason}, %{tasks: tasks} = state), do: {:stop, reason, state}

  def handle_info(message, state) do
    if Share.share?(message),
      do: {:noreply, received_share(message, state)},
      # Late replies of abandoned polls, exits of linked processes, anything else.
      else: {:noreply, state}
  end

  @impl true
  def terminate(reason, state) do
    if reason in [:normal, :shutdown] or match?({:shutdown, _}, reason),
      do: ManagedStore.erase(state.store_key)

    unregister_explain(state.topology)
    :ok
  end

  # explain/2's call: a copy of what the strategy knows, nothing slow. The
  # diagnosis happens in the caller. A node may be connected before its
  # connect task's answer arrives: it is noted as connected from now.
  @impl true
  def handle_call(:explain_facts, _from, state) do
    connected = list_nodes(state)
    state = note_connected(state, MapSet.new(connected))
    {:reply, {:ok, facts(state, connected)}, state}
  end

  def handle_call(_request, _from, state), do: {:reply, {:error, :unknown_call}, state}

  @impl true
  def format_status(:terminate, [_pdict, state]), do: redact(state)
  def format_status(_normal, [_pdict, state]), do: [data: [{~c"State", redact(state)}]]

  # The token already lives in a closure; this keeps crash reports short by
  # leaving out views' droplets, which can number thousands.
  defp redact(state) do
    %{
      state
      | poll: state.poll && Map.take(state.poll, [:stage, :started, :listed_at]),
        check: state.check && Map.take(state.check, [:from, :view]),
        pending_share: state.pending_share && Share.view(state.pending_share),
        warned: MapSet.size(state.warned),
        last_view:
          state.last_view && %{state.last_view | droplets: length(state.last_view.droplets)}
    }
  end

  ## Timers: one per purpose, each message tagged with its ref.

  defp arm(state, purpose, delay) do
    state = disarm(state, purpose)
    ref = make_ref()
    timer = Process.send_after(self(), {:droplet_timer, purpose, ref}, max(delay, 0))
    %{state | timers: Map.put(state.timers, purpose, {ref, timer})}
  end

  # Cancelled, and its ref forgotten, so a message already delivered is ignored.
  defp disarm(state, purpose) do
    case Map.pop(state.timers, purpose) do
      {nil, _} ->
        state

      {{_ref, timer}, timers} ->
        Process.cancel_timer(timer)
        %{state | timers: timers}
    end
  end

  defp timer(:tick, state), do: tick(state)

  defp timer(:poll_watchdog, %{poll: poll} = state) when poll != nil,
    do: poll_failed(:timeout, nil, state)

  defp timer(:check_watchdog, %{check: check} = state) when check != nil,
    do: check_failed(:timeout, state)

  defp timer(:removals, state), do: progress_removals(state)
  defp timer(_purpose, state), do: state

  ## The tick

  defp tick(state) do
    interval = state.config.polling_interval
    state = arm(state, :tick, interval)
    unix_now = System.system_time(:millisecond)
    size = MapSet.size(state.managed) + 1

    cond do
      state.poll != nil ->
        state

      is_integer(state.not_before) and unix_now < state.not_before ->
        arm(state, :tick, state.not_before - unix_now)

      Coordination.tick(state.coordination, now(), interval, size) == :follow ->
        state

      true ->
        start_api_poll(state)
    end
  end

  ## The API poll: listing, probing, apply

  defp start_api_poll(%{poll: poll} = state) when poll != nil, do: state

  defp start_api_poll(state) do
    config = state.config
    deadline = config.api_timeout * 3

    poll = %{
      stage: :listing,
      ref: nil,
      call: nil,
      started: System.monotonic_time(),
      listed_at: System.system_time(:millisecond)
    }

    coordination = %{state.coordination | last_api_poll_at: now()}
    state = %{state | poll: poll, not_before: nil, coordination: coordination}

    case Token.fetch(config.token) do
      {:ok, secret, token} ->
        list(secret, deadline, put_in(state.config.token, token))

      {:error, reason} ->
        poll_failed(reason, nil, state)
    end
  end

  # The secret is only passed on: it never enters the state.
  defp list(secret, deadline, state) do
    config = state.config

    {:ok, request} =
      LibclusterDroplet.list_request(
        [
          token: secret,
          deadline: deadline,
          keep_alive: Schedule.keep_alive(config.polling_interval, config.max_backoff)
        ] ++ Config.list_options(config)
      )

    case LibclusterDroplet.start_list_droplets(request) do
      {:ok, call} ->
        Telemetry.execute(
          [:libcluster_droplet, :poll, :start],
          %{system_time: System.system_time()},
          %{topology: state.topology}
        )

        state = arm(state, :poll_watchdog, deadline + @watchdog_grace)
        %{state | poll: %{state.poll | ref: call.ref, call: call}}

      {:error, reason} ->
        poll_failed(reason, nil, state)
    end
  end

  # The client-side filters first: a listing they cannot be applied to
  # (a VPC unknown) fails the poll like an API error, membership untouched.
  defp listed(%Listing{} = listing, state) do
    Log.debug(state.topology, fn ->
      "found #{length(listing.droplets)} droplets with #{listing.requests} requests"
    end)

    case Plan.filter(listing.droplets, state.config, Node.self()) do
      {:ok, kept, excluded} ->
        filtered(listing, kept, excluded, state)

      {:error, reason} ->
        poll_failed(reason, listing.rate_limit, state)
    end
  end

  defp filtered(listing, kept, excluded, state) do
    if excluded != [] do
      Log.debug(state.topology, fn ->
        "#{length(excluded)} listed droplets are outside the regions or VPC asked for"
      end)
    end

    stretch = Schedule.stretch(state.stretch, state.rate_limit, listing.rate_limit)
    {selection, state} = select(kept, state)
    selection = %{selection | excluded: excluded}
    view = {state.poll.listed_at, state.polls + 1}
    state = %{state | rate_limit: listing.rate_limit, stretch: stretch}
    state = enable_coordination(state)
    # When the next poll goes out: the share tells followers, who judge the
    # poller's silence by it.
    delay = next_delay(listing, state)
    # Followers start their own health checks while this node runs its own.
    share(kept, selection, view, delay, state)

    poll =
      Map.merge(state.poll, %{
        listing: listing,
        selection: selection,
        view: view,
        delay: delay,
        seen: Explain.listed(kept, excluded),
        probed_at: System.monotonic_time()
      })

    case probe(selection, state) do
      :unchecked ->
        api_probed(:unchecked, %{state | poll: poll})

      {:ok, call, wait} ->
        poll = %{poll | stage: :probing, ref: call.ref, call: call}
        arm(%{state | poll: poll}, :poll_watchdog, wait)

      {:error, reason} ->
        poll_failed(reason, nil, %{state | poll: poll})
    end
  end

  defp api_probed(health, state) do
    %{listing: listing, selection: selection, view: view, started: started, delay: delay} =
      state.poll

    state = apply_view(state, selection, health, view, {:listing, started, state.poll.seen})

    Telemetry.execute(
      [:libcluster_droplet, :poll, :stop],
      Map.merge(
        %{duration: System.monotonic_time() - started, requests: listing.requests},
        stage_counts(listing, selection, health, state)
      ),
      %{
        topology: state.topology,
        droplets: length(listing.droplets),
        nodes: MapSet.size(state.managed)
      }
    )

    unix_now = System.system_time(:millisecond)

    state = %{
      state
      | poll: nil,
        failures: 0,
        last_poll_at: unix_now,
        polls: state.polls + 1,
        not_before: Schedule.not_before(listing.rate_limit, nil, unix_now),
        # Not stored after a success: replacing a persistent term on every
        # poll would scan every process each time.
        next_poll_at: nil
    }

    state |> arm(:tick, delay) |> persist()
  end

  # The paced wait after a successful listing: the interval stretched while
  # the token's budget keeps falling, and spread by Schedule.pace/5.
  defp next_delay(listing, state) do
    Schedule.pace(
      state.config.polling_interval * state.stretch,
      listing.rate_limit,
      listing.requests,
      System.system_time(:millisecond),
      state.config.max_requests_per_minute
    )
  end

  defp poll_failed(reason, rate_limit, state) do
    # A poll given up by its watchdog must not keep probing or paging.
    cancel_call(state.poll)
    failures = state.failures + 1
    config = state.config
    unix_now = System.system_time(:millisecond)
    rate_limited = with {:rate_limited, _} <- reason, do: reason, else: (_ -> nil)
    floor = Schedule.not_before(rate_limit, rate_limited, unix_now)
    delay = Schedule.backoff(config.polling_interval, failures, config.max_backoff)
    delay = if floor, do: max(delay, floor - unix_now), else: delay

    Log.warn(
      state.topology,
      "DigitalOcean API poll failed (#{Error.class(reason)}): #{Error.format(reason)}#{token_source(reason, config)}; " <>
        "keeping the #{MapSet.size(state.managed)} nodes as they are, next poll in #{delay} ms"
    )

    # A rejected token may have been rotated into its file without changing
    # the file's size or time: the next poll reads it again.
    state =
      if reason == :unauthorized,
        do: put_in(state.config.token, Token.forget(config.token)),
        else: state

    state = %{state | last_error: Explain.error_summary(reason)}

    Telemetry.execute(
      [:libcluster_droplet, :poll, :error],
      %{duration: System.monotonic_time() - state.poll.started},
      %{topology: state.topology, reason: Error.class(reason), failures: failures}
    )

    %{
      state
      | poll: nil,
        failures: failures,
        not_before: floor,
        next_poll_at: unix_now + delay,
        rate_limit: rate_limit || state.rate_limit
    }
    |> disarm(:poll_watchdog)
    |> arm(:tick, delay)
    |> persist()
  end

  defp token_source(:unauthorized, config), do: " (token from #{Token.describe(config.token)})"
  defp token_source(_reason, _config), do: ""

  ## Shares

  # The leader tells the strategy on every connected node it selected or
  # manages what it found within the filters: only names and addresses.
  defp share(droplets, selection, {listed_at, seq}, delay, state) do
    c = state.coordination
    unlisted? = require_listed?(state) and not selection.self_listed?

    if Coordination.leads?(c, now(), state.config.polling_interval) and not unlisted? do
      message =
        Share.encode(%Share{
          topology: state.topology,
          from: Node.self(),
          fingerprint: c.fingerprint,
          interval: delay,
          seq: seq,
          listed_at: listed_at,
          droplets: for(%{address: a, name: n} when is_binary(a) <- droplets, do: {n, a})
        })

      targets = MapSet.union(state.managed, MapSet.new(selection.candidates, &elem(&1, 0)))
      Share.send(message, c.name, Enum.filter(Node.list(), &MapSet.member?(targets, &1)))
    end

    :ok
  end

  defp received_share(message, state) do
    case Share.decode(message) do
      {:ok, %Share{topology: topology} = share} when topology == state.topology ->
        accept_share(share, state)

      {:ok, %Share{} = share} ->
        Log.debug(state.topology, fn ->
          "ignoring a share of topology #{inspect(share.topology)} from #{inspect(share.from)}"
        end)

        state

      {:error, reason} ->
        sender = Share.sender(message)

        warn_once(state, {:share, sender, reason}, fn ->
          "ignoring a share from #{inspect(sender)} that this version cannot read " <>
            "(#{Share.describe_error(reason)}); membership is unchanged"
        end)
    end
  end

  defp accept_share(share, state) do
    case Coordination.share(
           state.coordination,
           share.from,
           share.fingerprint,
           now(),
           Node.self(),
           share.interval
         ) do
      :ignore ->
        state

      {:accept, coordination, watch} ->
        coordination =
          if watch == :monitor, do: monitor_leader(coordination, state), else: coordination

        state = %{state | coordination: coordination}

        cond do
          not Share.newer?(Share.view(share), state.view) -> state
          state.check != nil -> %{state | pending_share: newest(share, state.pending_share)}
          true -> check_share(share, state)
        end
    end
  end

  defp check_share(share, state) do
    Log.debug(state.topology, fn ->
      "applying #{length(share.droplets)} droplets shared by #{inspect(share.from)}"
    end)

    {selection, state} = select(share.droplets, state)
    view = Share.view(share)
    source = {:share, share.from, Explain.shared(share.droplets)}
    probed_at = System.monotonic_time()

    case probe(selection, state) do
      :unchecked ->
        state |> apply_view(selection, :unchecked, view, source) |> persist()

      {:ok, call, wait} ->
        check = %{
          ref: call.ref,
          call: call,
          selection: selection,
          view: view,
          from: share.from,
          source: source,
          probed_at: probed_at
        }

        arm(%{state | check: check}, :check_watchdog, wait)

      {:error, reason} ->
        check_failed(reason, %{state | check: %{view: view, from: share.from}})
    end
  end

  defp share_probed(health, state) do
    %{selection: selection, view: view, source: source} = state.check

    %{state | check: nil}
    |> apply_view(selection, health, view, source)
    |> persist()
    |> next_share()
  end

  # Without probe results nobody can be vouched for: keep membership as is.
  defp check_failed(reason, state) do
    # A check given up by its watchdog must not keep probing.
    cancel_call(state.check)

    why = if reason == :timeout, do: "no answer in time", else: Error.format(reason)

    Log.warn(
      state.topology,
      "health checks of a shared view failed: #{why}; keeping the nodes as they are"
    )

    next_share(%{disarm(state, :check_watchdog) | check: nil})
  end

  # Cancelling a call that has finished does nothing, so this is safe on
  # every failure path, whether the call answered or was given up.
  defp cancel_call(%{call: %LibclusterDroplet.Call{} = call}), do: LibclusterDroplet.cancel(call)
  defp cancel_call(_poll_or_check), do: :ok

  defp newest(share, nil), do: share

  defp newest(share, pending),
    do: if(Share.newer?(Share.view(share), Share.view(pending)), do: share, else: pending)

  defp next_share(%{pending_share: nil} = state), do: state

  defp next_share(%{pending_share: share} = state) do
    state = %{state | pending_share: nil}
    if Share.newer?(Share.view(share), state.view), do: check_share(share, state), else: state
  end

  defp monitor_leader(%Coordination{leader: leader} = coordination, state) do
    if state.coordination.leader_ref,
      do: Process.demonitor(state.coordination.leader_ref, [:flush])

    ref = Process.monitor({coordination.name, leader})

    Log.debug(state.topology, fn ->
      "following #{inspect(leader)}, which polls the API for this cluster"
    end)

    %{coordination | leader_ref: ref}
  end

  # Handled whatever is in flight: a poll in flight finishes as the
  # leader's (it shares), and a tick is armed in any case.
  defp leader_down(state) do
    visible = MapSet.new(Node.list())
    connected = Enum.filter(state.managed, &MapSet.member?(visible, &1))
    gone = state.coordination.leader

    case Coordination.leader_down(state.coordination, connected, now(), Node.self()) do
      {:poll_now, coordination} ->
        Log.debug(state.topology, fn -> "#{inspect(gone)} stopped polling; taking over" end)
        start_api_poll(%{state | coordination: coordination})

      {:await, _successor, coordination} ->
        %{state | coordination: monitor_leader(coordination, state)}
    end
  end

  ## Views: selection, health checks, the desired set

  defp select(droplets, state) do
    selection = Plan.select(droplets, state.config.node_basename, Node.self())

    state =
      Enum.reduce(selection.unusable, state, fn {name, basename, address, reason}, state ->
        warn_once(state, {:name, name}, fn ->
          "skipping droplet #{inspect(name)}: #{Plan.describe_unusable(reason, basename, address)}"
        end)
      end)

    {selection, state}
  end

  defp probe(selection, state),
    do: HealthCheck.start(selection, state.config.health_check, @watchdog_grace)

  # `source` is `{:listing, started, droplets}` for this node's own API
  # poll, started at the monotonic `started` (a poll started after the last
  # view was applied is newer whatever the clocks say), or `{:share, from,
  # droplets}`; `droplets`, the view's droplets as explain/2 shows them.
  defp apply_view(state, selection, health, view, source) do
    own_started = with {:listing, started, _} <- source, do: started, else: (_ -> nil)

    if Share.newer?(view, state.view) or
         (own_started != nil and own_started > state.view_applied_at) do
      require_listed? = require_listed?(state)
      log_failed_probes(health, state)

      {desired, strikes} =
        Plan.decide(selection, health, state.managed, state.strikes, require_listed?)

      stale = Plan.diff(state.managed, desired)
      unlisted? = require_listed? and not selection.self_listed?
      selected = MapSet.new(selection.candidates, &elem(&1, 0))

      state = %{
        state
        | view: view,
          view_applied_at: System.monotonic_time(),
          managed: desired,
          strikes: strikes,
          selected: selected,
          last_view: last_view(source, view),
          watch: NodeWatch.keep(state.watch, selected)
      }

      state = note_listed(not unlisted?, selection, state)

      # Only nodes no longer selected are removed. A node still selected but
      # failing this node's probes is no longer managed here, nothing more:
      # probes are this node's view, and a local fault must not evict anyone.
      state =
        if unlisted?,
          do: leave_cluster(stale, selection, state),
          else: start_removals(Enum.reject(stale, &MapSet.member?(selected, &1)), state)

      state
      |> cancel_unwanted_connects()
      |> dispatch_connects()
    else
      Log.debug(state.topology, fn -> "ignoring a view older than the one applied" end)
      state
    end
  end

  # Since when each managed node is connected, for explain/2.
  defp note_connected(state, connected) do
    managed = MapSet.intersection(state.managed, connected)
    %{state | watch: NodeWatch.connected(state.watch, managed, System.system_time(:millisecond))}
  end

  defp last_view(source, {listed_at, _seq}) do
    {from, droplets} =
      case source do
        {:listing, _started, droplets} -> {:listing, droplets}
        {:share, from, droplets} -> {{:share, from}, droplets}
      end

    %{
      source: from,
      listed_at: listed_at,
      applied_at: System.system_time(:millisecond),
      droplets: droplets
    }
  end

  # Each node's probe, timed, kept for explain/2; a node failing
  # NodeWatch.warn_after() probes in a row is logged once, and once more
  # when it passes again.
  defp note_probes(state, phase, results) do
    {:tcp, opts} = state.config.health_check
    started = Map.get(phase, :probed_at, System.monotonic_time())
    batch_us = System.convert_time_unit(System.monotonic_time() - started, :native, :microsecond)
    unix_now = System.system_time(:millisecond)

    {watch, events} =
      NodeWatch.probed(
        state.watch,
        phase.selection.candidates,
        results,
        unix_now,
        batch_us / 1000,
        opts[:timeout]
      )

    Enum.each(events, fn
      {:failing, node, probe} ->
        {:error, reason} = probe.result

        Log.warn(
          state.topology,
          "#{inspect(node)} has failed its health check on port #{opts[:port]} for #{probe.failed} polls in a row: " <>
            "#{Explain.describe_probe_error(reason)}; this node does not connect to it until it passes " <>
            "(Cluster.Strategy.Droplet.explain(#{inspect(state.topology)}) shows every droplet's stage)"
        )

      {:recovered, node, _probe} ->
        Log.info(
          state.topology,
          "#{inspect(node)} passes its health check on port #{opts[:port]} again"
        )
    end)

    %{state | watch: watch}
  end

  # The poll's counts per stage, for alerting on "listed but not connected":
  # droplets listed, nodes selected (this node aside), healthy (all of them
  # without a health check), and connected when the poll ends (the connects
  # it starts finish later).
  defp stage_counts(listing, selection, health, state) do
    selected = Enum.map(selection.candidates, &elem(&1, 0))
    connected = MapSet.new(list_nodes(state))

    healthy =
      case health do
        :unchecked -> length(selected)
        health -> Enum.count(selected, &(Map.get(health, &1) == :ok))
      end

    %{
      listed: length(listing.droplets),
      selected: length(selected),
      healthy: healthy,
      connected: Enum.count(selected, &MapSet.member?(connected, &1))
    }
  end

  defp log_failed_probes(:unchecked, _state), do: :ok

  defp log_failed_probes(health, state) do
    for {node, {:error, reason}} <- health do
      Log.debug(state.topology, fn ->
        "health check of #{inspect(node)} failed: #{inspect(reason)}"
      end)
    end

    :ok
  end

  defp require_listed?(state), do: state.config.require_listed and Node.alive?()

  # One warning when this node finds itself missing from the selection, one
  # info line when it is back.
  defp note_listed(listed?, selection, state) do
    cond do
      listed? == state.listed? ->
        state

      listed? ->
        if state.listed? == false,
          do:
            Log.info(
              state.topology,
              "#{inspect(Node.self())} is among the selected droplets again; joining"
            )

        %{state | listed?: true}

      true ->
        expected = selection.candidates |> Enum.map(&elem(&1, 0)) |> Enum.take(5)

        Log.warn(
          state.topology,
          "this node #{inspect(Node.self())} is not among the #{length(selection.candidates)} selected droplets, " <>
            "so it joins no one (expected node names such as #{inspect(expected)}); check RELEASE_NODE " <>
            "and :node_basename, or set require_listed: false for a node that is not a droplet"
        )

        %{state | listed?: false}
    end
  end

  ## Removal (decisions in LibclusterDroplet.Removal)

  # This node is no longer selected: it leaves by itself, which removes it
  # alone from the cluster.
  defp leave_cluster(stale, selection, state) do
    visible = MapSet.new(Node.list())

    # Stale nodes, nodes being removed, and any selected node: `global` may
    # connect this node back to them after it left, and it leaves again.
    cluster =
      Enum.concat([stale, Map.keys(state.removing), Enum.map(selection.candidates, &elem(&1, 0))])

    if Enum.any?(cluster, &MapSet.member?(visible, &1)) do
      topology = state.topology

      Task.Supervisor.start_child(state.tasks, fn ->
        left = Membership.leave_cluster(cluster)

        Log.info(
          topology,
          "left the cluster (#{length(left)} nodes): this node's droplet is no longer selected"
        )
      end)
    end

    disarm(%{state | removing: %{}}, :removals)
  end

  # Nothing to remove and nothing being removed: the common view costs no
  # list_nodes call here.
  defp start_removals([], %{removing: removing} = state) when map_size(removing) == 0,
    do: state

  defp start_removals(stale, state) do
    visible = MapSet.new(Node.list())
    connected = MapSet.new(list_nodes(state))

    {actions, removing} =
      Removal.start(state.removing, stale, visible, connected, state.managed, now())

    %{state | removing: removing} |> run_removals(actions) |> arm_removals()
  end

  defp progress_removals(state) do
    {actions, removing} = Removal.due(state.removing, MapSet.new(list_nodes(state)), now())
    %{state | removing: removing} |> run_removals(actions) |> arm_removals() |> persist()
  end

  defp run_removals(state, actions) do
    Enum.reduce(actions, state, fn
      {:ask_to_leave, node}, state ->
        Log.info(
          state.topology,
          "asking #{inspect(node)} to leave the cluster: its droplet is no longer selected"
        )

        Membership.request_leave(node)
        state

      {:disconnect, node, asked?}, state ->
        if asked? do
          Log.warn(
            state.topology,
            "#{inspect(node)} did not leave within #{Removal.leave_grace()} ms; disconnecting it from this node"
          )
        end

        outcome =
          case Membership.disconnect_nodes(state.topology, state.disconnect, state.list_nodes, [
                 node
               ]) do
            :ok -> :ok
            {:error, _} -> :error
          end

        %{state | removing: Removal.disconnected(state.removing, node, outcome)}
    end)
  end

  defp arm_removals(state) do
    case Removal.next_check(state.removing, now(), state.config.polling_interval) do
      nil -> disarm(state, :removals)
      wait -> arm(state, :removals, wait)
    end
  end

  ## Connects, off this process

  defp dispatch_connects(state) do
    connected = MapSet.new(list_nodes(state))
    state = note_connected(state, connected)
    wanted = Enum.sort(state.managed)
    {nodes, connector} = Connector.next(state.connector, wanted, connected, now())

    Enum.reduce(nodes, %{state | connector: connector}, fn node, state ->
      %{topology: topology, connect: connect, list_nodes: list_nodes} = state

      task =
        Task.Supervisor.async_nolink(state.tasks, fn ->
          connect_one(topology, connect, list_nodes, node)
        end)

      %{state | connector: Connector.started(state.connector, node, task.ref)}
    end)
  end

  @doc false
  # Runs in a task: one libcluster connect_nodes/4 call per node, so its
  # log lines and telemetry are libcluster's own.
  def connect_one(topology, connect, list_nodes, node) do
    case Membership.connect_nodes(topology, connect, list_nodes, [node]) do
      :ok -> :ok
      {:error, [{^node, reason} | _]} -> {:error, reason}
      {:error, other} -> {:error, other}
    end
  end

  defp connect_done(ref, outcome, state) do
    interval = state.config.polling_interval
    max_backoff = state.config.max_backoff
    backoff = &Schedule.backoff(interval, &1, max_backoff)
    outcome = if outcome == :ok, do: :ok, else: normalize_outcome(outcome)
    node = Map.get(state.connector.in_flight, ref)
    previous = get_in(state.connector.failures, [node, :count]) || 0
    {node, failure, connector} = Connector.finished(state.connector, ref, outcome, now(), backoff)
    state = %{state | connector: connector}
    log_connect_streak(state, node, previous, failure)

    if failure do
      Log.debug(state.topology, fn ->
        "connecting to #{inspect(node)} failed (#{inspect(failure.reason)}, #{failure.count} in a row); " <>
          "next attempt in #{failure.retry_at - now()} ms"
      end)
    end

    dispatch_connects(state)
  end

  # One warning when a node has failed its connects NodeWatch.warn_after()
  # times in a row, one info line when it connects again: never a line per
  # attempt at the default level.
  defp log_connect_streak(state, node, previous, failure) do
    outcome = if failure, do: {:error, failure.count}, else: :ok

    case NodeWatch.connect_event(previous, outcome) do
      :failing ->
        Log.warn(
          state.topology,
          "connecting to #{inspect(node)} has failed #{failure.count} times in a row " <>
            "(#{Explain.describe_connect_error(failure.reason)}); retrying with backoff, " <>
            "next attempt in #{max(failure.retry_at - now(), 0)} ms; " <>
            "Cluster.Strategy.Droplet.explain(#{inspect(state.topology)}) diagnoses why"
        )

      :recovered ->
        Log.info(
          state.topology,
          "connected to #{inspect(node)} after #{previous} failed attempts"
        )

      nil ->
        :ok
    end
  end

  defp normalize_outcome({:error, _} = error), do: error
  defp normalize_outcome(other), do: {:error, other}

  # Connects to nodes no longer wanted are abandoned, not killed: killing
  # the task would not stop net_kernel's setup, which can still succeed.
  # Their answers are watched for that (see abandoned_done/3).
  defp cancel_unwanted_connects(state) do
    {refs, connector} = Connector.forget(state.connector, state.managed)
    nodes = Map.new(refs, &{&1, Map.fetch!(state.connector.in_flight, &1)})

    %{state | connector: connector, abandoned: Map.merge(state.abandoned, nodes)}
  end

  # An abandoned connect that succeeded after its node's droplet went away:
  # that node is removed like any other.
  defp abandoned_done(ref, outcome, state) do
    {node, abandoned} = Map.pop(state.abandoned, ref)
    state = %{state | abandoned: abandoned}

    if outcome == :ok and not MapSet.member?(state.managed, node) and
         not MapSet.member?(state.selected, node) and not unlisted?(state),
       do: start_removals([node], state),
       else: state
  end

  defp unlisted?(state), do: state.listed? == false

  defp list_nodes(%{list_nodes: {m, f, a}}), do: apply(m, f, a)

  ## Coordination

  # Coordination needs distribution and this node's strategy registered
  # under the topology's name; it is set up as soon as both are possible.
  defp enable_coordination(%{coordination: %Coordination{enabled?: true}} = state), do: state
  defp enable_coordination(%{config: %Config{coordinate: false}} = state), do: state

  defp enable_coordination(state) do
    name = Coordination.registered_name(state.topology)

    cond do
      not Node.alive?() ->
        state

      Process.whereis(name) not in [nil, self()] ->
        Log.warn(
          state.topology,
          "another strategy is registered as #{inspect(name)}; polling without coordination"
        )

        %{state | config: %{state.config | coordinate: false}}

      true ->
        if Process.whereis(name) == nil, do: Process.register(self(), name)

        coordination = %{
          state.coordination
          | enabled?: true,
            name: name,
            fingerprint: Config.fingerprint(state.config)
        }

        %{state | coordination: coordination}
    end
  end

  ## Explain

  # explain/2 finds a strategy by its topology, under libcluster or not: a
  # persistent term per topology, written when the strategy starts (a new
  # key costs no global scan; replacing it after a restart costs one).
  defp explain_key(topology), do: {__MODULE__, :explain, topology}

  defp register_explain(topology), do: :persistent_term.put(explain_key(topology), self())

  defp unregister_explain(topology) do
    if :persistent_term.get(explain_key(topology), nil) == self(),
      do: :persistent_term.erase(explain_key(topology))
  end

  defp facts(state, connected) do
    mono_now = now()
    unix_now = System.system_time(:millisecond)
    to_unix = fn mono -> mono && unix_now - (mono_now - mono) end
    c = state.coordination

    polling =
      cond do
        c.enabled? and Coordination.following?(c, mono_now, state.config.polling_interval) ->
          {:follows, c.leader, to_unix.(c.leader_seen_at)}

        c.enabled? and Node.list() != [] ->
          :leads

        true ->
          :alone
      end

    %Explain.Facts{
      topology: state.topology,
      self: Node.self(),
      now: unix_now,
      alive?: Node.alive?(),
      config: Explain.config_facts(state.config),
      view: state.last_view,
      probes: state.watch.probes,
      connects:
        Map.new(state.connector.failures, fn {n, f} ->
          {n, %{f | retry_at: to_unix.(f.retry_at)}}
        end),
      in_flight: Map.values(state.connector.in_flight),
      managed: MapSet.to_list(state.managed),
      connected: connected,
      since: state.watch.since,
      polls: state.polls,
      last_poll_at: state.last_poll_at,
      failures: state.failures,
      last_error: state.last_error,
      polling: polling
    }
  end

  ## Helpers

  defp warn_once(state, key, message_fun) do
    if MapSet.member?(state.warned, key) do
      state
    else
      Log.warn(state.topology, message_fun.())
      %{state | warned: MapSet.put(state.warned, key)}
    end
  end

  defp persist(state) do
    ManagedStore.save(state.store_key, %ManagedStore{
      managed: state.managed,
      removing: state.removing,
      failures: state.failures,
      not_before: state.not_before,
      next_poll_at: state.next_poll_at
    })

    state
  end

  defp now, do: System.monotonic_time(:millisecond)
end
