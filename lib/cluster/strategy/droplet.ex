defmodule Cluster.Strategy.Droplet do
  @moduledoc """
  A libcluster strategy that forms a cluster out of DigitalOcean droplets.

  It polls `GET /v2/droplets` (optionally filtered by tag or name), picks
  each active droplet's private or public, IPv4 or IPv6 address, optionally
  checks that a TCP port answers there, and connects to the nodes named
  `basename@address`; nodes it connected whose droplet went away, stopped
  being active, or failed the health check are disconnected.

      config :libcluster,
        topologies: [
          droplets: [
            strategy: Cluster.Strategy.Droplet,
            config: [token: System.fetch_env!("DO_TOKEN"), tag_name: "web", node_basename: "app"]
          ]
        ]

  See `Cluster.Strategy.Droplet.Config` for every option and its default.

  ## Without libcluster

  The strategy also runs on its own, with libcluster's default connect,
  disconnect and list functions:

      children = [
        {Cluster.Strategy.Droplet, topology: :droplets, config: [token: token, tag_name: "web"]}
      ]

  ## When the API fails

  Membership is left exactly as it is, one warning names the class of the
  error (see `LibclusterDroplet.Error`), and the next poll is scheduled with
  exponential backoff and jitter; the first success returns to
  `polling_interval`. After a 429, nothing is sent before `retry-after` (or
  `ratelimit-reset` when no request remains).

  ## How a poll works

  Every network call runs on a thread of the NIF and answers with a message,
  so this process keeps answering (`:sys.get_state/1`, shutdown) while a poll
  is in flight. A poll: list droplets → select each one's address → probe
  the candidates in parallel (with `:health_check`) → disconnect the nodes
  this strategy connected that are no longer wanted → connect the wanted
  nodes not yet connected → schedule the next poll.

  The set of nodes this strategy manages is mirrored in `:persistent_term`,
  so a restarted strategy knows what it connected before it died and never
  disconnects a healthy node.

  ## Telemetry

  When `:telemetry` is loaded, besides libcluster's `[:libcluster,
  :connect_node | :disconnect_node, :ok | :error]`, the strategy emits
  `[:libcluster_droplet, :poll, :start]` (`%{system_time: t}`),
  `[:libcluster_droplet, :poll, :stop]` (`%{duration: native, requests: n}`,
  metadata `topology`, `droplets`, `nodes`) and
  `[:libcluster_droplet, :poll, :error]` (`%{duration: native}`, metadata
  `topology`, `reason` (the error class), `failures`).

  ## One poller per cluster

  With `coordinate: true` (the default) and distribution running, the
  connected nodes do not each poll at full rate: the lowest-named one polls
  and shares what it found with the others, which poll only at a slow
  safety interval and take over within one interval when it goes away. See
  `LibclusterDroplet.Coordination`.
  """

  use GenServer

  alias Cluster.Strategy.Droplet.Config

  alias LibclusterDroplet.{
    Coordination,
    Error,
    Listing,
    Log,
    Membership,
    NodeName,
    Schedule,
    Telemetry
  }

  @libcluster? Code.ensure_loaded?(Cluster.Strategy)
  if @libcluster?, do: @behaviour(Cluster.Strategy)

  @default_connect {:net_kernel, :connect_node, []}
  @default_disconnect {:erlang, :disconnect_node, []}
  @default_list_nodes {:erlang, :nodes, [:connected]}

  # A reply lost in the NIF would stall polling forever; this long after the
  # listing's own deadline the poll is abandoned and counted as a failure.
  @watchdog_grace 5_000

  @enforce_keys [:topology, :config]
  defstruct topology: nil,
            connect: @default_connect,
            disconnect: @default_disconnect,
            list_nodes: @default_list_nodes,
            config: nil,
            managed: MapSet.new(),
            poll: nil,
            timer: nil,
            failures: 0,
            not_before: nil,
            rate_limit: nil,
            polls: 0,
            warned_names: MapSet.new(),
            coordination: %Coordination{},
            stretch: 1

  @typedoc """
  The strategy's state. `managed` holds the nodes this strategy wants
  connected (it connects and disconnects only those); `poll` the API poll
  or leader's share being processed, if any; `coordination` who polls for
  the cluster; `polls` the successful API polls so far; `stretch` the
  factor of `polling_interval` while the token's budget is low.
  """
  @type t :: %__MODULE__{
          topology: atom(),
          connect: Membership.mfa_tuple(),
          disconnect: Membership.mfa_tuple(),
          list_nodes: Membership.mfa_tuple(),
          config: Config.t(),
          managed: MapSet.t(node()),
          poll: map() | nil,
          timer: reference() | nil,
          failures: non_neg_integer(),
          not_before: integer() | nil,
          rate_limit: LibclusterDroplet.rate_limit() | nil,
          polls: non_neg_integer(),
          warned_names: MapSet.t(String.t()),
          coordination: Coordination.t(),
          stretch: pos_integer()
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
    # Adopt what a previous incarnation connected, so a restart never
    # disconnects a node it had connected and that is still wanted.
    state = %{state | managed: :persistent_term.get(managed_key(state), MapSet.new())}
    {:ok, enable_coordination(state), {:continue, :poll}}
  end

  @impl true
  def handle_continue(:poll, state), do: {:noreply, start_api_poll(state)}

  @impl true
  def handle_info(:poll, state), do: {:noreply, tick(%{state | timer: nil})}

  def handle_info(
        {:droplet_nif_list, ref, result, info},
        %{poll: %{stage: :listing, ref: ref}} = state
      ) do
    case Listing.from_nif(result, info) do
      {:ok, listing} -> {:noreply, handle_listing(listing, state)}
      {:error, reason} -> {:noreply, poll_failed(reason, Map.get(info, :rate_limit), state)}
    end
  end

  def handle_info(
        {:droplet_nif_probe, ref, {:error, reason}},
        %{poll: %{stage: :probing, ref: ref}} = state
      ) do
    {:noreply, probe_failed(reason, state)}
  end

  def handle_info(
        {:droplet_nif_probe, ref, results},
        %{poll: %{stage: :probing, ref: ref}} = state
      ) do
    healthy =
      for {{node, _address}, {_, result}} <- Enum.zip(state.poll.candidates, results),
          healthy?(node, result, state),
          do: node

    {:noreply, finish(healthy, state)}
  end

  def handle_info({:poll_watchdog, ref}, %{poll: %{ref: ref, source: :api}} = state) do
    {:noreply, poll_failed(:timeout, nil, state)}
  end

  def handle_info(
        {:libcluster_droplet_share, topology, from, fingerprint, droplets},
        %{topology: topology} = state
      )
      when is_atom(from) and is_list(droplets) do
    {:noreply, handle_share(from, fingerprint, droplets, state)}
  end

  def handle_info(
        {:DOWN, ref, :process, _, _reason},
        %{coordination: %{leader_ref: ref}} = state
      ) do
    {:noreply, leader_down(state)}
  end

  # Late replies of abandoned polls, stale timers and anything else.
  def handle_info(_message, state), do: {:noreply, state}

  @impl true
  def format_status(:terminate, [_pdict, state]), do: redact(state)
  def format_status(_normal, [_pdict, state]), do: [data: [{~c"State", redact(state)}]]

  # The token already lives in a closure; this keeps crash reports short by
  # leaving out a poll's droplets, which can number thousands.
  defp redact(state) do
    poll = state.poll && Map.take(state.poll, [:source, :stage, :started])
    %{state | poll: poll, warned_names: MapSet.size(state.warned_names)}
  end

  ## Polling

  # A timer tick: poll the API, unless a live leader polls for this node.
  defp tick(%{poll: poll} = state) when poll != nil, do: state

  defp tick(state) do
    interval = state.config.polling_interval
    size = MapSet.size(state.managed) + 1

    case Coordination.tick(state.coordination, now(), interval, size) do
      :follow -> schedule(state, interval)
      :poll -> start_api_poll(state)
    end
  end

  defp start_api_poll(%{poll: poll} = state) when poll != nil, do: state

  defp start_api_poll(state) do
    now = System.system_time(:millisecond)

    if is_integer(state.not_before) and now < state.not_before do
      # A rate-limit floor is still in force: wait it out instead of calling.
      schedule(state, state.not_before - now)
    else
      config = state.config
      deadline = config.api_timeout * 3

      {:ok, request} =
        LibclusterDroplet.list_request(
          api_url: config.api_url,
          token: config.token,
          tag_name: config.tag_name,
          name: config.name,
          network: config.network,
          ipv6: config.ipv6,
          ca_file: config.ca_file,
          request_timeout: config.api_timeout,
          deadline: deadline
        )

      poll = %{source: :api, stage: :listing, ref: nil, started: System.monotonic_time()}
      coordination = %{state.coordination | last_api_poll_at: now()}
      state = %{state | poll: poll, not_before: nil, coordination: coordination}

      case LibclusterDroplet.start_list_droplets(request) do
        {:ok, ref} ->
          Process.send_after(self(), {:poll_watchdog, ref}, deadline + @watchdog_grace)

          Telemetry.execute(
            [:libcluster_droplet, :poll, :start],
            %{system_time: System.system_time()},
            %{topology: state.topology}
          )

          %{state | poll: %{poll | ref: ref}}

        {:error, reason} ->
          poll_failed(reason, nil, state)
      end
    end
  end

  defp handle_listing(%Listing{} = listing, state) do
    Log.debug(state.topology, fn ->
      "found #{length(listing.droplets)} droplets with #{listing.requests} requests"
    end)

    state = %{
      state
      | rate_limit: listing.rate_limit,
        poll: Map.put(state.poll, :listing, listing)
    }

    check_candidates(listing.droplets, state)
  end

  # A leader's share: its selected droplets, applied as if this node had
  # polled, unless a poll of its own is in flight.
  defp handle_share(from, fingerprint, droplets, state) do
    interval = state.config.polling_interval

    case Coordination.share(state.coordination, from, fingerprint, now(), Node.self(), interval) do
      :ignore ->
        state

      {:accept, coordination, watch} ->
        coordination =
          if watch == :monitor, do: monitor_leader(coordination, state), else: coordination

        state = %{state | coordination: coordination}

        if state.poll == nil do
          Log.debug(state.topology, fn ->
            "applying #{length(droplets)} droplets shared by #{inspect(from)}"
          end)

          poll = %{source: :share, stage: :candidates, ref: nil, started: System.monotonic_time()}
          check_candidates(droplets, %{state | poll: poll})
        else
          state
        end
    end
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

  # Candidates, then health checks (if configured), then membership.
  defp check_candidates(droplets, state) do
    {candidates, state} = candidates(droplets, state)

    case state.config.health_check do
      {:tcp, port: port, timeout: timeout} when candidates != [] ->
        addresses = Enum.map(candidates, &elem(&1, 1))

        case LibclusterDroplet.start_probe(addresses, port, timeout: timeout) do
          {:ok, ref} ->
            %{
              state
              | poll: Map.merge(state.poll, %{stage: :probing, ref: ref, candidates: candidates})
            }

          {:error, reason} ->
            probe_failed(reason, state)
        end

      _ ->
        finish(Enum.map(candidates, &elem(&1, 0)), state)
    end
  end

  # {node, address} for every active droplet with an address of the chosen
  # kind and a usable node name, except this node.
  defp candidates(droplets, state) do
    self = Node.self()

    {candidates, warned} =
      Enum.reduce(droplets, {[], state.warned_names}, fn
        %{address: address, name: name}, {acc, warned}
        when is_binary(address) and is_binary(name) ->
          basename = state.config.node_basename || name

          case NodeName.build(basename, address) do
            {:ok, ^self} ->
              {acc, warned}

            {:ok, node} ->
              {[{node, address} | acc], warned}

            {:error, reason} ->
              {acc, warn_unusable_name(state.topology, name, basename, address, reason, warned)}
          end

        _not_selected, acc ->
          acc
      end)

    {candidates |> Enum.reverse() |> Enum.uniq_by(&elem(&1, 0)), %{state | warned_names: warned}}
  end

  # Once per droplet name: the same droplet would otherwise warn on every poll.
  defp warn_unusable_name(topology, name, basename, address, reason, warned) do
    if MapSet.member?(warned, name) do
      warned
    else
      why =
        case reason do
          :invalid_basename ->
            "#{inspect(basename)} cannot be the name part of a node name (only ASCII letters, digits, '_' and '-'); " <>
              "set :node_basename"

          :invalid_address ->
            "#{inspect(address)} is not an IP address"
        end

      Log.warn(topology, "skipping droplet #{inspect(name)}: #{why}")
      MapSet.put(warned, name)
    end
  end

  defp healthy?(_node, {:ok, _us}, _state), do: true

  defp healthy?(node, {:error, reason}, state) do
    Log.debug(state.topology, fn ->
      "health check of #{inspect(node)} failed: #{inspect(reason)}"
    end)

    false
  end

  # Without probe results nobody can be vouched for: keep membership as is.
  defp probe_failed(reason, %{poll: %{source: :api}} = state), do: poll_failed(reason, nil, state)

  defp probe_failed(reason, state) do
    Log.warn(
      state.topology,
      "health checks failed: #{Error.format(reason)}; keeping the nodes as they are"
    )

    %{state | poll: nil}
  end

  defp finish(desired, state) do
    desired = MapSet.new(desired)
    apply_membership(desired, state)
    state = %{state | managed: desired}

    case state.poll do
      %{source: :api} -> finish_api_poll(state)
      %{source: :share} -> %{state | poll: nil}
    end
  end

  defp apply_membership(desired, state) do
    stale = MapSet.difference(state.managed, desired)

    if MapSet.size(stale) > 0 do
      Membership.disconnect_nodes(
        state.topology,
        state.disconnect,
        state.list_nodes,
        MapSet.to_list(stale)
      )
    end

    Membership.connect_nodes(
      state.topology,
      state.connect,
      state.list_nodes,
      MapSet.to_list(desired)
    )

    if desired != state.managed, do: :persistent_term.put(managed_key(state), desired)
  end

  defp finish_api_poll(state) do
    %{listing: listing, started: started} = state.poll

    Telemetry.execute(
      [:libcluster_droplet, :poll, :stop],
      %{duration: System.monotonic_time() - started, requests: listing.requests},
      %{
        topology: state.topology,
        droplets: length(listing.droplets),
        nodes: MapSet.size(state.managed)
      }
    )

    state = enable_coordination(state)
    share(listing, state)

    config = state.config
    unix_now = System.system_time(:millisecond)
    floor = Schedule.not_before(listing.rate_limit, nil, unix_now)

    delay =
      Schedule.pace(
        config.polling_interval * state.stretch,
        listing.rate_limit,
        listing.requests,
        unix_now,
        config.max_requests_per_minute
      )

    state = %{state | poll: nil, failures: 0, polls: state.polls + 1, not_before: floor}
    schedule(state, delay)
  end

  # The leader tells the strategy on every node it manages what it found:
  # only names and addresses, a few dozen bytes a droplet.
  defp share(listing, %{coordination: coordination} = state) do
    if Coordination.leads?(coordination, now(), state.config.polling_interval) do
      droplets =
        for %{address: a, name: n} when is_binary(a) <- listing.droplets,
            do: %{name: n, address: a}

      message =
        {:libcluster_droplet_share, state.topology, Node.self(), coordination.fingerprint,
         droplets}

      connected = MapSet.new(Node.list())

      for node <- state.managed, MapSet.member?(connected, node) do
        # :noconnect: a share must never set up a connection of its own.
        :erlang.send({coordination.name, node}, message, [:noconnect])
      end
    end

    :ok
  end

  defp poll_failed(reason, rate_limit, state) do
    failures = state.failures + 1
    config = state.config
    now = System.system_time(:millisecond)
    rate_limited = with {:rate_limited, _} <- reason, do: reason, else: (_ -> nil)
    floor = Schedule.not_before(rate_limit, rate_limited, now)
    delay = Schedule.backoff(config.polling_interval, failures, config.max_backoff)
    delay = if floor, do: max(delay, floor - now), else: delay

    Log.warn(
      state.topology,
      "DigitalOcean API poll failed (#{Error.class(reason)}): #{Error.format(reason)}; " <>
        "keeping the #{MapSet.size(state.managed)} nodes as they are, next poll in #{delay} ms"
    )

    Telemetry.execute(
      [:libcluster_droplet, :poll, :error],
      %{duration: System.monotonic_time() - state.poll.started},
      %{topology: state.topology, reason: Error.class(reason), failures: failures}
    )

    state = %{
      state
      | poll: nil,
        failures: failures,
        not_before: floor,
        rate_limit: rate_limit || state.rate_limit
    }

    schedule(state, delay)
  end

  defp schedule(state, delay) do
    if state.timer, do: Process.cancel_timer(state.timer)
    %{state | timer: Process.send_after(self(), :poll, max(delay, 0))}
  end

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
            fingerprint: fingerprint(state.config)
        }

        %{state | coordination: coordination}
    end
  end

  # Shares are only followed between strategies that would find the same nodes.
  defp fingerprint(config) do
    :erlang.phash2(
      {config.api_url, config.tag_name, config.name, config.network, config.ipv6,
       config.node_basename}
    )
  end

  defp now, do: System.monotonic_time(:millisecond)

  defp managed_key(state), do: {__MODULE__, :managed, state.topology}
end
