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
  """

  use GenServer

  alias Cluster.Strategy.Droplet.Config
  alias LibclusterDroplet.{Error, Listing, Log, Membership, NodeName, Schedule, Telemetry}

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
            warned_names: MapSet.new()

  @typedoc """
  The strategy's state. `managed` holds the nodes this strategy wants
  connected (it connects and disconnects only those); `poll` the call in
  flight, if any.
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
          warned_names: MapSet.t(String.t())
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
    {:ok, state, {:continue, :poll}}
  end

  @impl true
  def handle_continue(:poll, state), do: {:noreply, start_poll(state)}

  @impl true
  def handle_info(:poll, state), do: {:noreply, start_poll(%{state | timer: nil})}

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
        {:droplet_nif_probe, ref, results},
        %{poll: %{stage: :probing, ref: ref}} = state
      ) do
    healthy =
      for {{node, _address}, {_, result}} <- Enum.zip(state.poll.candidates, results),
          healthy?(node, result, state),
          do: node

    {:noreply, finish_poll(healthy, state)}
  end

  def handle_info({:poll_watchdog, ref}, %{poll: %{ref: ref}} = state) do
    {:noreply, poll_failed(:timeout, nil, state)}
  end

  # Late replies of abandoned polls, stale timers and anything else.
  def handle_info(_message, state), do: {:noreply, state}

  @impl true
  def format_status(:terminate, [_pdict, state]), do: redact(state)
  def format_status(_normal, [_pdict, state]), do: [data: [{~c"State", redact(state)}]]

  # The token already lives in a closure; this keeps crash reports short by
  # leaving out a poll's droplets, which can number thousands.
  defp redact(state) do
    poll = state.poll && Map.take(state.poll, [:stage, :started])
    %{state | poll: poll, warned_names: MapSet.size(state.warned_names)}
  end

  ## Polling

  defp start_poll(%{poll: poll} = state) when poll != nil, do: state

  defp start_poll(state) do
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

      case LibclusterDroplet.start_list_droplets(request) do
        {:ok, ref} ->
          Process.send_after(self(), {:poll_watchdog, ref}, deadline + @watchdog_grace)

          Telemetry.execute(
            [:libcluster_droplet, :poll, :start],
            %{system_time: System.system_time()},
            %{
              topology: state.topology
            }
          )

          %{
            state
            | poll: %{stage: :listing, ref: ref, started: System.monotonic_time()},
              not_before: nil
          }

        {:error, reason} ->
          poll_failed(reason, nil, %{
            state
            | poll: %{stage: :listing, ref: nil, started: System.monotonic_time()}
          })
      end
    end
  end

  defp handle_listing(%Listing{} = listing, state) do
    {candidates, state} = candidates(listing.droplets, state)

    Log.debug(state.topology, fn ->
      "found #{length(listing.droplets)} droplets (#{listing.requests} requests), " <>
        "#{length(candidates)} candidate nodes: #{inspect(Enum.map(candidates, &elem(&1, 0)))}"
    end)

    state = %{
      state
      | rate_limit: listing.rate_limit,
        poll: Map.put(state.poll, :listing, listing)
    }

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
            # Without probes nobody can be vouched for; keep membership as is.
            poll_failed(reason, nil, state)
        end

      _ ->
        finish_poll(Enum.map(candidates, &elem(&1, 0)), state)
    end
  end

  # {node, address} for every active droplet with an address of the chosen
  # kind and a usable node name, except this node.
  defp candidates(droplets, state) do
    self = Node.self()

    {candidates, warned} =
      Enum.reduce(droplets, {[], state.warned_names}, fn
        %{address: address, name: name}, {acc, warned} when is_binary(address) ->
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

  defp finish_poll(desired, state) do
    desired = MapSet.new(desired)
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

    %{listing: listing, started: started} = state.poll

    Telemetry.execute(
      [:libcluster_droplet, :poll, :stop],
      %{duration: System.monotonic_time() - started, requests: listing.requests},
      %{topology: state.topology, droplets: length(listing.droplets), nodes: MapSet.size(desired)}
    )

    floor = Schedule.not_before(listing.rate_limit, nil, System.system_time(:millisecond))

    state = %{
      state
      | managed: desired,
        poll: nil,
        failures: 0,
        polls: state.polls + 1,
        not_before: floor
    }

    config = state.config
    now = System.system_time(:millisecond)

    delay =
      Schedule.pace(
        config.polling_interval,
        listing.rate_limit,
        listing.requests,
        now,
        config.max_requests_per_minute
      )

    schedule(state, delay)
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

    schedule(
      %{
        state
        | poll: nil,
          failures: failures,
          not_before: floor,
          rate_limit: rate_limit || state.rate_limit
      },
      delay
    )
  end

  defp schedule(state, delay) do
    if state.timer, do: Process.cancel_timer(state.timer)
    %{state | timer: Process.send_after(self(), :poll, max(delay, 0))}
  end

  defp managed_key(state), do: {__MODULE__, :managed, state.topology}
end
