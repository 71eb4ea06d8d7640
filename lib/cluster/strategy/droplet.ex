defmodule Cluster.Strategy.Droplet do
  @moduledoc """
  A libcluster strategy that forms a cluster out of DigitalOcean droplets.

      config :libcluster,
        topologies: [
          droplets: [
            strategy: Cluster.Strategy.Droplet,
            config: [token: {:system, "DIGITALOCEAN_TOKEN"}, tag_name: "web", node_basename: "app"]
          ]
        ]

  The options are `Cluster.Strategy.Droplet.Config`'s;
  [how it works](how-it-works.md) tells what it does with them, and
  `explain/2` why a node is or is not connected.
  """

  # Only the process: timers, messages, side effects; Pipeline, HealthCheck,
  # Members and Coordination decide. One phase at a time under one
  # watchdog, a %Poll{} or a %ShareCheck{}; every path to the API goes
  # through start_api_poll/1, which honours the rate-limit floor.

  use GenServer

  alias Cluster.Strategy.Droplet.{Config, Poll, ShareCheck}
  alias LibclusterDroplet.{Coordination, Error, Explain, Floor, HealthCheck, Log, Members}
  alias LibclusterDroplet.{Pipeline, Pool, Schedule, Share, Store, Telemetry, Token}

  @libcluster? Code.ensure_loaded?(Cluster.Strategy)
  if @libcluster?, do: @behaviour(Cluster.Strategy)

  # A reply lost in the NIF would stall a phase forever; this long after the
  # NIF's own deadline the phase is given up and its call cancelled.
  @watchdog_grace 5_000

  @enforce_keys [:topology, :config, :members]
  defstruct topology: nil,
            config: nil,
            members: nil,
            schedule: %Schedule{},
            timers: %{},
            phase: nil,
            pending_share: nil,
            poll_due?: false,
            view: nil,
            pool: nil,
            coordination: %Coordination{},
            warned: MapSet.new()

  @typedoc "The strategy's state."
  @type t :: %__MODULE__{}

  @doc "The child spec, as libcluster's `use Cluster.Strategy` would define it."
  if @libcluster?, do: @impl(Cluster.Strategy)
  @spec child_spec(term()) :: Supervisor.child_spec()
  def child_spec(args),
    do: %{id: __MODULE__, type: :worker, start: {__MODULE__, :start_link, [args]}}

  @doc """
  Starts the strategy, from what `Cluster.Supervisor` passes
  (`[%Cluster.Strategy.State{}]`) or a keyword list: `:topology` (an atom),
  `:config`, and optionally `:connect`, `:disconnect`, `:list_nodes` (MFAs,
  libcluster's defaults) and `:name`. A bad option raises `ArgumentError`.
  """
  if @libcluster?, do: @impl(Cluster.Strategy)
  @spec start_link([map()] | keyword()) :: GenServer.on_start()
  def start_link([%{topology: _, config: _} = libcluster_state]) do
    fields = Map.take(libcluster_state, [:topology, :connect, :disconnect, :list_nodes, :config])
    GenServer.start_link(__MODULE__, new!(fields))
  end

  def start_link(opts) when is_list(opts) do
    unless Keyword.keyword?(opts) and is_atom(opts[:topology]) and opts[:topology] != nil do
      raise ArgumentError,
            "Cluster.Strategy.Droplet.start_link/1 expects [%Cluster.Strategy.State{}] or a " <>
              "keyword list with :topology (an atom) and :config (value not shown)"
    end

    {gen_opts, opts} = Keyword.split(opts, [:name])
    GenServer.start_link(__MODULE__, new!(Map.new(opts)), gen_opts)
  end

  defp new!(fields) do
    config = Config.new!(Map.get(fields, :config) || [])
    members = Members.new!(fields, config)
    %__MODULE__{topology: members.topology, config: config, members: members}
  end

  @doc """
  Explains, droplet by droplet, why this node is or is not connected to each
  node of the topology's last view; see `LibclusterDroplet.Explain.run/2`
  and [troubleshooting](troubleshooting.md).
  """
  @spec explain(atom() | pid(), keyword()) ::
          {:ok, Explain.Report.t()} | {:error, :not_running | {:no_answer, timeout()}}
  defdelegate explain(topology, opts \\ []), to: Explain, as: :run

  @doc "Renders a report of `explain/2` as text."
  @spec format_explanation(Explain.Report.t()) :: String.t()
  defdelegate format_explanation(report), to: Explain.Format, as: :format

  @impl true
  def init(%__MODULE__{} = state) do
    # Trapped so that a normal shutdown runs terminate/2, which erases the
    # stored membership; a crash or a kill leaves it to the successor.
    Process.flag(:trap_exit, true)
    Explain.register(state.topology)
    {:ok, tasks} = Task.Supervisor.start_link()
    stored = Store.load(state.topology, Config.fingerprint(state.config))
    members = %{state.members | tasks: tasks, managed: stored.managed, removing: stored.removing}
    schedule = %Schedule{failures: stored.failures, next_poll_at: stored.next_poll_at}
    state = %{state | members: members, schedule: schedule} |> coordinate() |> arm_members()
    # A predecessor that was backing off passes that on; the floor is
    # honoured by start_api_poll/1 itself.
    wait = (stored.next_poll_at || 0) - System.system_time(:millisecond)

    if wait <= 0,
      do: {:ok, arm(state, :tick, state.config.polling_interval), {:continue, :poll}},
      else: {:ok, arm(state, :tick, wait)}
  end

  @impl true
  def handle_continue(:poll, state), do: {:noreply, start_api_poll(state)}

  @impl true
  def handle_info({:droplet_timer, purpose, ref}, state) do
    if match?({^ref, _}, state.timers[purpose]),
      do: {:noreply, timer(purpose, %{state | timers: Map.delete(state.timers, purpose)})},
      else: {:noreply, state}
  end

  def handle_info(
        {:droplet_nif_list, ref, result, info},
        %{phase: %Poll{stage: :listing, call: %{ref: ref}}} = state
      ) do
    state = disarm(state, :watchdog)

    with {:ok, listing} <- LibclusterDroplet.listed(state.config.api_url, result, info),
         {:ok, verdicts} <- Pipeline.from_listing(listing.droplets, state.config, Node.self()) do
      {:noreply, listed(listing, verdicts, state)}
    else
      {:error, reason} -> {:noreply, phase_failed(reason, Map.get(info, :rate_limit), state)}
    end
  end

  def handle_info({:droplet_nif_probe, ref, results}, %{phase: %{call: %{ref: ref}}} = state) do
    state = disarm(state, :watchdog)

    case results do
      {:error, reason} -> {:noreply, phase_failed(reason, state)}
      results -> {:noreply, probed(results, note_checks(state, state.phase, results))}
    end
  end

  def handle_info({ref, outcome}, state) when is_reference(ref),
    do: task_done(ref, outcome, state)

  def handle_info({:DOWN, ref, :process, _, reason}, state) do
    if ref == state.coordination.leader_ref,
      do: {:noreply, leader_down(state)},
      else: task_done(ref, {:exit, reason}, state)
  end

  def handle_info({:EXIT, tasks, reason}, %{members: %{tasks: tasks}} = state),
    do: {:stop, reason, state}

  # Shares; late replies of given-up calls, exits of linked processes, anything else.
  def handle_info(message, state),
    do: {:noreply, if(Share.share?(message), do: received_share(message, state), else: state)}

  # explain/2's call: a copy of what the strategy knows, nothing slow; the
  # diagnosis happens in the caller.
  @impl true
  def handle_call(:explain_facts, _from, state) do
    connected = Members.connected(state.members)
    state = %{state | members: Members.note_connected(state.members, MapSet.new(connected))}
    {:reply, {:ok, Explain.Facts.of_strategy(state, connected)}, state}
  end

  def handle_call(_request, _from, state), do: {:reply, {:error, :unknown_call}, state}

  # The name is registered on every node, so any connected node can cast.
  @impl true
  def handle_cast(_request, state), do: {:noreply, state}

  @impl true
  def terminate(reason, state) do
    if reason in [:normal, :shutdown] or match?({:shutdown, _}, reason),
      do: Store.erase(state.topology)

    Explain.unregister(state.topology)
  end

  # Crash reports and :sys.get_state/1 show counts, not views of thousands
  # of droplets; the token lives only in closures.
  @impl true
  def format_status(:terminate, [_pdict, state]), do: summary(state)
  def format_status(_normal, [_pdict, state]), do: [data: [{~c"State", summary(state)}]]

  defp summary(state) do
    %{
      state
      | phase: state.phase && state.phase.__struct__,
        pending_share: state.pending_share && Share.view(state.pending_share),
        view: state.view && %{state.view | verdicts: length(state.view.verdicts)},
        warned: MapSet.size(state.warned)
    }
  end

  ## Timers: one per purpose, each message tagged with its ref.

  # Clamped to the longest timer the VM arms (about 49.7 days).
  defp arm(state, purpose, delay) do
    state = disarm(state, purpose)
    {ref, delay} = {make_ref(), delay |> max(0) |> min(0xFFFFFFFF)}
    timer = Process.send_after(self(), {:droplet_timer, purpose, ref}, delay)
    %{state | timers: Map.put(state.timers, purpose, {ref, timer})}
  end

  # Cancelled, and its ref forgotten, so a message already delivered is ignored.
  defp disarm(state, purpose) do
    {timer, timers} = Map.pop(state.timers, purpose)
    if timer, do: Process.cancel_timer(elem(timer, 1))
    %{state | timers: timers}
  end

  # The members' own timers, armed for when they say.
  defp arm_members(state) do
    Enum.reduce(Members.next_checks(state.members), state, fn
      {purpose, nil}, state -> disarm(state, purpose)
      {purpose, wait}, state -> arm(state, purpose, wait)
    end)
  end

  defp timer(:tick, state) do
    state = arm(state, :tick, state.config.polling_interval)
    size = MapSet.size(state.members.managed) + 1
    interval = state.config.polling_interval

    cond do
      state.phase != nil -> state
      Coordination.tick(state.coordination, now(), interval, size) == :follow -> state
      true -> start_api_poll(state)
    end
  end

  defp timer(:watchdog, %{phase: phase} = state) when phase != nil,
    do: phase_failed(:timeout, state)

  defp timer(:removals, state), do: members(state, &Members.progress/1) |> persist()
  defp timer(:connects, state), do: members(state, &Members.expire_connects/1)
  defp timer(_purpose, state), do: state

  defp members(state, fun), do: arm_members(%{state | members: fun.(state.members)})

  defp task_done(ref, outcome, state) do
    case Members.task_done(state.members, ref, outcome) do
      {:ok, members} ->
        Process.demonitor(ref, [:flush])
        {:noreply, arm_members(%{state | members: members})}

      :error ->
        {:noreply, state}
    end
  end

  ## The API poll

  # The one way to the API: every path (tick, takeover, restart, a poll
  # due after a share check) comes here, and nothing is sent before the floor.
  defp start_api_poll(%{phase: phase} = state) when phase != nil, do: %{state | poll_due?: true}

  defp start_api_poll(state) do
    case Floor.wait(state.config.api_url) do
      0 -> list(%{state | poll_due?: false})
      wait -> arm(%{state | poll_due?: false}, :tick, wait)
    end
  end

  defp list(state) do
    config = state.config
    deadline = config.api_timeout * 3
    poll = %Poll{started: System.monotonic_time(), listed_at: System.system_time(:millisecond)}
    c = %{state.coordination | last_api_poll_at: now()}
    state = %{state | phase: poll, coordination: c}
    keep_alive = Schedule.keep_alive(config.polling_interval, config.max_backoff)
    fixed = [deadline: deadline, keep_alive: keep_alive] ++ Config.list_options(config)

    # The secret is only passed on: it never enters the state.
    with :ok <- Config.withheld(config),
         {:ok, secret, token} <- Token.fetch(config.token),
         state = put_in(state.config.token, token),
         :ok <- Config.check_secret(config, secret),
         pool = Pool.cached(state.pool, now()),
         {:ok, request} <- LibclusterDroplet.list_request([token: secret] ++ fixed, pool),
         {:ok, call} <- LibclusterDroplet.start_list_droplets(request) do
      Telemetry.poll_start(state.topology)
      arm(%{state | phase: %{poll | call: call}}, :watchdog, deadline + @watchdog_grace)
    else
      {:error, {:token_in_option, option} = reason} ->
        phase_failed(reason, %{state | config: Config.withhold(state.config, option)})

      {:error, reason} ->
        phase_failed(reason, state)
    end
  end

  defp listed(listing, verdicts, %{phase: poll} = state) do
    Log.debug(state.topology, fn ->
      "found #{length(listing.droplets)} droplets with #{listing.requests} requests"
    end)

    now_ms = System.system_time(:millisecond)
    {delay, schedule} = Schedule.listed(state.schedule, listing, state.config, now_ms)
    state = %{state | pool: Pool.listed(Pool.cached(state.pool, now()), listing.pool, now())}
    key = {poll.listed_at, state.schedule.polls + 1}
    poll = %{poll | listing: listing, verdicts: verdicts, key: key, delay: delay}
    state = coordinate(%{state | schedule: schedule, phase: poll})
    # Followers start their own checks while this node runs its own.
    state = state |> warn_unusable(verdicts) |> share(poll) |> send_floor()
    probe(Pipeline.targets(verdicts), state.phase, state)
  end

  defp probe(targets, phase, state) do
    case HealthCheck.start(targets, state.config.health_check, @watchdog_grace) do
      :unchecked ->
        probed(:unchecked, %{state | phase: phase})

      {:ok, call, wait} ->
        phase = %{phase | call: call, probed_at: System.monotonic_time()}
        phase = if is_struct(phase, Poll), do: %{phase | stage: :probing}, else: phase
        arm(%{state | phase: phase}, :watchdog, wait)

      {:error, reason} ->
        phase_failed(reason, %{state | phase: phase})
    end
  end

  defp probed(results, %{phase: %Poll{} = poll} = state) do
    verdicts = Pipeline.with_results(poll.verdicts, results)
    # A node that took over while its poll was in flight shares now.
    state = if poll.shared?, do: state, else: share(state, poll)
    state = apply_view(state, verdicts, poll.key, {:listing, poll.started}, poll.listing.pool)
    Telemetry.poll_stop(state.topology, poll, verdicts, state.members)
    schedule = Schedule.succeeded(state.schedule, System.system_time(:millisecond))

    %{state | phase: nil, schedule: schedule}
    |> arm(:tick, poll.delay)
    |> persist()
    |> next_phase()
  end

  defp probed(results, %{phase: %ShareCheck{share: share} = check} = state) do
    verdicts = Pipeline.with_results(check.verdicts, results)

    %{state | phase: nil}
    |> apply_view(verdicts, Share.view(share), {:share, share.from}, share.pool)
    |> persist()
    |> next_phase()
  end

  defp note_checks(state, phase, results) do
    check = state.config.health_check
    %{state | members: Members.note_checks(state.members, phase, results, check)}
  end

  # A phase given up, by its watchdog too: its call is cancelled (a poll must
  # not keep probing or paging; cancelling a finished call does nothing).
  defp phase_failed(reason, rate_limit \\ nil, %{phase: phase} = state) do
    if phase.call, do: LibclusterDroplet.cancel(phase.call)
    state = %{disarm(state, :watchdog) | phase: nil}

    case phase do
      %Poll{started: started} -> poll_failed(reason, rate_limit, started, state)
      %ShareCheck{} -> check_failed(reason, state)
    end
  end

  defp poll_failed(reason, rate_limit, started, state) do
    config = state.config
    {wait, now_ms} = {Floor.wait(config.api_url), System.system_time(:millisecond)}
    {delay, schedule} = Schedule.failed(state.schedule, reason, rate_limit, config, wait, now_ms)

    kept = MapSet.size(state.members.managed)
    warned = Log.poll_failed(state.warned, state.topology, reason, config, kept, delay)
    Telemetry.poll_error(state.topology, started, Error.class(reason), schedule.failures)
    # A rejected token may have been rotated into its file unseen: the next
    # poll reads it again. A pool not found is looked up again.
    token = if reason == :unauthorized, do: Token.forget(config.token), else: config.token
    pool = if reason == :pool_not_found, do: nil, else: state.pool
    state = %{state | config: %{config | token: token}, schedule: schedule, warned: warned}

    %{state | pool: pool}
    |> arm(:tick, delay)
    |> notice(delay)
    |> persist()
    |> next_phase()
  end

  ## Shares

  # The leader sends its verdicts, its next wait and its floor to the
  # strategy on every connected node it selected or manages; after a failed
  # poll, a notice without a view: it is alive, when it polls next, and the
  # floor its followers must respect too.
  defp share(state, %Poll{} = poll) do
    if leads?(state) and not unlisted?(state, poll.verdicts) do
      send_share(state, poll.delay, poll.key, poll.verdicts, poll.listing.pool)
      %{state | phase: %{poll | shared?: true}}
    else
      state
    end
  end

  defp notice(state, delay) do
    if leads?(state) and state.view, do: send_share(state, delay, state.view.key, nil, nil)
    send_floor(state)
  end

  # A floor this node's response set holds every node of the topology.
  defp send_floor(%{coordination: c} = state) do
    if c.enabled? and Floor.wait(state.config.api_url) > 0 do
      at = Floor.not_before(state.config.api_url)
      Share.send(Share.floor(state.topology, c.fingerprint, at), c.name, Node.list())
    end

    state
  end

  defp leads?(state),
    do: Coordination.leads?(state.coordination, now(), state.config.polling_interval)

  defp send_share(state, delay, key, verdicts, pool) do
    floor = Floor.not_before(state.config.api_url)
    share = Share.new(state.topology, state.coordination.fingerprint, delay, key, floor)
    targets = MapSet.union(state.members.managed, state.members.selected)
    nodes = Enum.filter(Node.list(), &MapSet.member?(targets, &1))
    Share.send(%{share | verdicts: verdicts, pool: pool}, state.coordination.name, nodes)
  end

  defp received_share(message, state) do
    case Share.decode(message, state.topology) do
      {:ok, share} ->
        accept_share(share, state)

      {:floor, fingerprint, not_before} ->
        if fingerprint == state.coordination.fingerprint,
          do: Floor.raise(state.config.api_url, not_before)

        state

      :other_topology ->
        Log.debug(state.topology, fn ->
          "ignoring a share of topology #{inspect(elem(message, 2))} from " <>
            inspect(Share.sender(message))
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
    case Coordination.share(state.coordination, share, now(), Node.self()) do
      :ignore ->
        state

      {:accept, c, watch} ->
        Floor.raise(state.config.api_url, share.not_before)
        c = if watch == :monitor, do: monitor_leader(c, state), else: c
        state = %{state | coordination: c}

        # A view waits for the phase in flight; next_phase/1 checks it is newer.
        if Share.notice?(share),
          do: state,
          else: next_phase(%{state | pending_share: Share.newest(share, state.pending_share)})
    end
  end

  defp check_share(share, state) do
    verdicts = Pipeline.from_share(share, state.config.node_basename, Node.self())

    Log.debug(state.topology, fn ->
      "applying #{length(verdicts)} droplets shared by #{inspect(share.from)}"
    end)

    check = %ShareCheck{share: share, verdicts: verdicts}
    probe(Pipeline.targets(verdicts), check, warn_unusable(state, verdicts))
  end

  # Without check results nobody can be vouched for: membership is kept.
  defp check_failed(reason, state) do
    why = if reason == :timeout, do: "no answer in time", else: Error.format(reason)
    Log.warn(state.topology, "health checks of a shared view failed: #{why}; keeping the nodes")
    next_phase(state)
  end

  # What waited for no phase to run: the newest share (if newer than the
  # view), else a poll.
  defp next_phase(%{phase: nil, pending_share: %Share{} = share} = state) do
    state = %{state | pending_share: nil}

    if Share.newer?(Share.view(share), state.view[:key]),
      do: check_share(share, state),
      else: next_phase(state)
  end

  defp next_phase(%{phase: nil, poll_due?: true} = state), do: start_api_poll(state)
  defp next_phase(state), do: state

  defp monitor_leader(%Coordination{leader: leader} = c, state) do
    Log.debug(state.topology, fn ->
      "following #{inspect(leader)}, which polls the API for this cluster"
    end)

    Coordination.monitor(c, state.coordination.leader_ref)
  end

  # Handled whatever is in flight: a poll in flight finishes as the
  # leader's (it shares when it ends), a check in flight is followed by a
  # poll; the floor holds either way.
  defp leader_down(state) do
    visible = MapSet.new(Node.list())
    connected = Enum.filter(state.members.managed, &MapSet.member?(visible, &1))
    gone = state.coordination.leader

    case Coordination.leader_down(state.coordination, connected, now(), Node.self()) do
      {:poll_now, c} ->
        Log.debug(state.topology, fn -> "#{inspect(gone)} stopped polling; taking over" end)
        state = %{state | coordination: c}
        if match?(%Poll{}, state.phase), do: state, else: start_api_poll(state)

      {:await, _successor, c} ->
        %{state | coordination: monitor_leader(c, state)}
    end
  end

  # Coordination needs distribution; it is set up as soon as it can be.
  defp coordinate(state) do
    {c, config} = Coordination.enable(state.coordination, state.topology, state.config)
    %{state | coordination: c, config: config}
  end

  ## Views

  # `source` is `{:listing, started}` for this node's own poll, started at
  # the monotonic `started` (a poll started after the last view was
  # applied is newer whatever the clocks say), or `{:share, from}`.
  defp apply_view(state, verdicts, key, source, pool) do
    own_started = with {:listing, started} <- source, do: started, else: (_ -> nil)

    if Share.newer?(key, state.view[:key]) or
         (own_started != nil and own_started > state.view[:applied_at]) do
      checked? = state.config.health_check != nil
      members = Members.apply_view(state.members, verdicts, checked?, unlisted?(state, verdicts))

      view = %{
        key: key,
        applied_at: System.monotonic_time(),
        at: System.system_time(:millisecond),
        source: source,
        verdicts: verdicts,
        pool: pool
      }

      warned = Log.prune(state.warned, verdicts)
      arm_members(%{state | view: view, members: members, warned: warned})
    else
      Log.debug(state.topology, fn -> "ignoring a view older than the one applied" end)
      state
    end
  end

  defp unlisted?(state, verdicts),
    do: state.config.require_listed and Node.alive?() and not Pipeline.self_listed?(verdicts)

  defp warn_unusable(state, verdicts),
    do: %{state | warned: Log.unusable(state.warned, state.topology, verdicts)}

  defp warn_once(state, key, message),
    do: %{state | warned: Log.once(state.warned, state.topology, key, message)}

  defp persist(state) do
    Store.save(state.topology, Config.fingerprint(state.config), state.members, state.schedule)
    state
  end

  defp now, do: System.monotonic_time(:millisecond)
end
