defmodule LibclusterDroplet.Share do
  @moduledoc false
  # What a leader sends the strategy on the other nodes: its last view's
  # verdicts (every listed droplet, the filtered ones included, so a
  # follower's explain answers for each) and its rate-limit floor. Wire
  # form, version 3:
  #
  #     {:libcluster_droplet_share, 3, topology, %{from:, fingerprint:,
  #       interval: ms, seq:, listed_at: unix_ms, not_before: unix_ms | nil,
  #       verdicts: [{id, name, status, address, stage, node, why}] | nil, pool:}}
  #
  # `verdicts: nil` is a notice: the leader is alive, polls in `interval`.
  # `{listed_at, seq}` orders views (newer?/2). For rolling upgrades a view
  # is also sent as version 2, 2.0.0's `droplets: [{name, address}]`, which
  # is read too. Anything else tagged so decodes to {:error, reason}: logged
  # once per sender and ignored, never a membership change.

  alias LibclusterDroplet.Verdict

  @version 3
  @tag :libcluster_droplet_share
  @header [:from, :fingerprint, :interval, :seq, :listed_at]

  @enforce_keys [:topology | @header]
  defstruct @enforce_keys ++
              [version: @version, not_before: nil, verdicts: nil, droplets: nil, pool: nil]

  @type t :: %__MODULE__{
          version: 2 | 3,
          topology: atom(),
          from: node(),
          fingerprint: non_neg_integer(),
          interval: pos_integer(),
          seq: non_neg_integer(),
          listed_at: integer(),
          not_before: integer() | nil,
          verdicts: [Verdict.t()] | nil,
          droplets: [{String.t(), String.t()}] | nil
        }

  @type error :: {:unsupported_version, term()} | :malformed

  def version, do: @version

  # Whether `message` claims to be a share, of any version.
  def share?(message),
    do: is_tuple(message) and tuple_size(message) >= 1 and elem(message, 0) == @tag

  @doc """
  The order of views, `{listed_at, seq}`; `nil`, no view, is older than any.

      iex> LibclusterDroplet.Share.newer?({2_000, 1}, {1_000, 9})
      true
      iex> LibclusterDroplet.Share.newer?({1_000, 9}, {1_000, 9})
      false
  """
  def newer?(_view, nil), do: true
  def newer?(view, than), do: view > than

  # A share from this node, without a view yet: the sender's wait before
  # its next poll, the key of its last view (nil for none), its floor.
  def new(topology, fingerprint, interval, key, not_before) do
    {listed_at, seq} = key || {0, 0}

    %__MODULE__{
      topology: topology,
      from: Node.self(),
      fingerprint: fingerprint,
      interval: interval,
      seq: seq,
      listed_at: listed_at,
      not_before: not_before
    }
  end

  # The newer of two shares by their views (`pending` may be nil).
  def newest(share, nil), do: share
  def newest(share, pending), do: if(newer?(view(share), view(pending)), do: share, else: pending)

  def view(%__MODULE__{listed_at: listed_at, seq: seq}), do: {listed_at, seq}

  # A notice carries no view: the leader is alive and polls in `interval`.
  def notice?(share), do: share.verdicts == nil and share.droplets == nil

  # The wire forms: version 3, and version 2 too for a share with a view.
  def encode(%__MODULE__{} = share) do
    header = Map.take(share, @header)
    verdicts = share.verdicts && Enum.map(share.verdicts, &verdict_to_wire/1)
    v3 = Map.merge(header, %{not_before: share.not_before, verdicts: verdicts, pool: share.pool})
    [{@tag, @version, share.topology, v3} | if(share.verdicts, do: [v2(share, header)], else: [])]
  end

  defp v2(share, header) do
    droplets =
      for %Verdict{stage: stage} = v <- share.verdicts,
          stage not in [:outside_filters, :not_active, :no_address],
          do: {v.name, v.address}

    {@tag, 2, share.topology, Map.put(header, :droplets, droplets)}
  end

  defp verdict_to_wire(%Verdict{} = v),
    do: {v.id, v.name, v.status, v.address, v.stage, v.node, v.why}

  @doc """
  Reads a share, or tells why it cannot.

      iex> share = %LibclusterDroplet.Share{topology: :t, from: :"a@h", fingerprint: 1,
      ...>   interval: 5_000, seq: 3, listed_at: 1_700_000_000_000, verdicts: []}
      iex> [v3, _v2] = LibclusterDroplet.Share.encode(share)
      iex> LibclusterDroplet.Share.decode(v3) == {:ok, share}
      true
      iex> LibclusterDroplet.Share.decode({:libcluster_droplet_share, :t, :"a@h", 1, []})
      {:error, {:unsupported_version, 1}}
  """
  @spec decode(term()) :: {:ok, t()} | {:error, error()}
  def decode({@tag, version, topology, payload}) when version in [2, 3] do
    with true <- is_atom(topology) and is_map(payload),
         {:ok, share} <- header(topology, payload, version),
         {:ok, share} <- view(share, payload) do
      {:ok, share}
    else
      _ -> {:error, :malformed}
    end
  end

  # The unversioned share of releases before 2.0.0.
  def decode({@tag, topology, from, _fingerprint, droplets})
      when is_atom(topology) and is_atom(from) and is_list(droplets),
      do: {:error, {:unsupported_version, 1}}

  def decode(message) when tuple_size(message) >= 2 and is_integer(elem(message, 1)),
    do: {:error, {:unsupported_version, elem(message, 1)}}

  def decode(_message), do: {:error, :malformed}

  defp header(topology, payload, version) do
    fields = for key <- @header, do: {key, payload[key]}
    share = struct!(__MODULE__, [version: version, topology: topology] ++ fields)

    if is_atom(share.from) and share.from != nil and is_integer(share.fingerprint) and
         is_integer(share.interval) and share.interval > 0 and is_integer(share.seq) and
         share.seq >= 0 and is_integer(share.listed_at),
       do: {:ok, share},
       else: :error
  end

  defp view(%{version: 3} = share, %{verdicts: verdicts, not_before: not_before} = payload)
       when is_nil(not_before) or is_integer(not_before) do
    with {:ok, verdicts} <- each(verdicts, &verdict_from_wire/1),
         {:ok, pool} <- pool(payload[:pool]),
         do: {:ok, %{share | not_before: not_before, verdicts: verdicts, pool: pool}}
  end

  defp view(%{version: 2} = share, %{droplets: droplets}) when droplets != nil do
    with {:ok, droplets} <- each(droplets, &droplet/1), do: {:ok, %{share | droplets: droplets}}
  end

  defp view(_share, _payload), do: :error

  # The leader's pool, for its followers' explain.
  defp pool(nil), do: {:ok, nil}

  defp pool(%{id: id, name: name, tags: tags, members: members, active: active} = pool)
       when is_binary(id) and is_binary(name) and is_list(tags) and is_integer(members) and
              is_integer(active),
       do: {:ok, Map.take(pool, [:id, :name, :tags, :members, :active])}

  defp pool(_other), do: :error

  # Every element read by `read`, in order, or :error; nil (a notice) is
  # kept. Lists of any shape (improper too) are walked by hand: a share is
  # outside input, and must never crash its reader.
  defp each(nil, _read), do: {:ok, nil}
  defp each(list, read), do: each(list, read, [])
  defp each([], _read, acc), do: {:ok, Enum.reverse(acc)}

  defp each([wire | rest], read, acc) do
    case read.(wire) do
      {:ok, value} -> each(rest, read, [value | acc])
      :error -> :error
    end
  end

  defp each(_improper, _read, _acc), do: :error

  @stages Verdict.stages()

  defp verdict_from_wire({id, name, status, address, stage, node, why})
       when is_binary(name) and (is_binary(address) or is_nil(address)) and stage in @stages and
              is_atom(node) and (is_integer(id) or is_nil(id)) and
              (is_atom(status) or is_binary(status)) do
    named? = is_binary(address) and node != nil

    if (stage in [:selected, :this_node, :duplicate] and not named?) or not why?(stage, why) do
      :error
    else
      verdict = %Verdict{id: id, name: name, status: status, address: address, stage: stage}
      {:ok, %{verdict | node: node, why: why}}
    end
  end

  defp verdict_from_wire(_other), do: :error

  # What a stage may carry as its `why`, as LibclusterDroplet.Pipeline makes it.
  defp why?(:outside_filters, why), do: match?({:ok, [_ | _]}, each(why, &outside/1))

  defp why?(:unusable_name, {reason, base})
       when reason in [:invalid_basename, :invalid_address] and is_binary(base),
       do: true

  defp why?(stage, nil) when stage not in [:outside_filters, :unusable_name], do: true
  defp why?(_stage, _why), do: false

  # A known filter, with a value of the shape its field gives: anything
  # else would crash explain's describe/1 on this node.
  defp outside(outside),
    do: if(LibclusterDroplet.Filters.describable?(outside), do: {:ok, outside}, else: :error)

  defp droplet({name, address} = d) when is_binary(name) and is_binary(address), do: {:ok, d}
  defp droplet(_), do: :error

  # A floor notice, sent by any node whose response set a floor to every
  # strategy of its topology, leaders included: receivers under the same
  # fingerprint raise their floor to `not_before`, whoever sent it.
  def floor(topology, fingerprint, not_before),
    do: {@tag, :floor, topology, %{fingerprint: fingerprint, not_before: not_before}}

  # decode/1, checking the topology too: :other_topology for another's.
  def decode(
        {@tag, :floor, topology, %{fingerprint: fingerprint, not_before: not_before}},
        topology
      )
      when is_integer(fingerprint) and is_integer(not_before),
      do: {:floor, fingerprint, not_before}

  def decode({@tag, :floor, _topology, _payload}, _topology_expected), do: :other_topology

  def decode(message, topology) do
    case decode(message) do
      {:ok, %__MODULE__{topology: ^topology} = share} -> {:ok, share}
      {:ok, %__MODULE__{}} -> :other_topology
      error -> error
    end
  end

  # Sends a share's wire forms (or a floor notice) to `name` on each of
  # `nodes`, never setting up a connection.
  def send(share, name, nodes) do
    messages = if is_struct(share, __MODULE__), do: encode(share), else: [share]
    for node <- nodes, message <- messages, do: :erlang.send({name, node}, message, [:noconnect])
    :ok
  end

  def describe_error({:unsupported_version, v}),
    do: "protocol version #{inspect(v)}, this node speaks #{@version} and 2"

  def describe_error(:malformed), do: "malformed"

  # The sender named in a share of any version, when it can be found.
  def sender({@tag, _version, _topology, %{from: from}}) when is_atom(from), do: from
  def sender({@tag, _topology, from, _fingerprint, _droplets}) when is_atom(from), do: from
  def sender(_message), do: nil
end
