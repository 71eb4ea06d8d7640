defmodule LibclusterDroplet.Share do
  @moduledoc """
  The message a polling node sends to the strategy on the other nodes:
  its last listing's verdicts, so that they need not poll, and the
  rate-limit floor it knows, so that none of them sends a request before it.

  A share is versioned. Version 3, on the wire:

      {:libcluster_droplet_share, 3, topology, %{from: node, fingerprint: integer,
        interval: ms, seq: integer, listed_at: unix_ms, not_before: unix_ms | nil,
        verdicts: [verdict] | nil}}

  where each verdict is `{id, name, status, address, stage, node, why}`
  (see `LibclusterDroplet.Verdict`), every droplet of the listing, the
  ones outside the filters included, so that a follower's explain answers
  for each of them. `verdicts: nil` is a notice without a view: the
  leader is alive, its next poll is `interval` away, and `not_before` is
  the floor a 429 set.

  `listed_at` (the leader's clock when the listing started) and `seq` (its
  count of polls) order views (`newer?/2`), so a share that arrives late
  never undoes a fresher view. `interval` is how long the leader waits
  before its next poll: followers judge its silence by it.

  During a rolling upgrade, a leader also sends each share in version 2,
  the form of 2.0.0 (`droplets: [{name, address}]`, the droplets with an
  address), which such nodes read, and this release reads version 2 from
  them. Anything else tagged `:libcluster_droplet_share` is
  `{:error, reason}`: the strategy logs it once per sender and ignores it;
  membership never changes because of it.
  """

  alias LibclusterDroplet.Verdict

  @version 3
  @tag :libcluster_droplet_share

  @enforce_keys [:topology, :from, :fingerprint, :interval, :seq, :listed_at]
  defstruct @enforce_keys ++
              [version: @version, not_before: nil, verdicts: nil, droplets: nil, pool: nil]

  @typedoc """
  A share. `verdicts` (version 3) or `droplets` (`{name, address}`, from a
  version 2 sender) holds its view; both are `nil` in a notice.
  """
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

  @typedoc "Why a share could not be read: another protocol version, or a term of no known shape."
  @type error :: {:unsupported_version, term()} | :malformed

  @doc "The protocol version this release speaks."
  @spec version() :: pos_integer()
  def version, do: @version

  @doc "Whether `message` claims to be a share (of any version)."
  @spec share?(term()) :: boolean()
  def share?(message),
    do: is_tuple(message) and tuple_size(message) >= 1 and elem(message, 0) == @tag

  @doc """
  The order of views: `{listed_at, seq}`. `nil` (no view yet) is older than
  any view.

      iex> LibclusterDroplet.Share.newer?({2_000, 1}, {1_000, 9})
      true
      iex> LibclusterDroplet.Share.newer?({1_000, 9}, {1_000, 9})
      false
  """
  @spec newer?({integer(), non_neg_integer()}, {integer(), non_neg_integer()} | nil) ::
          boolean()
  def newer?(_view, nil), do: true
  def newer?(view, than), do: view > than

  @doc """
  A share from this node without a view yet: its `interval` (the wait
  before the sender's next poll), the key of the sender's last view
  (`nil` for none) and its floor.
  """
  @spec new(
          atom(),
          non_neg_integer(),
          pos_integer(),
          {integer(), non_neg_integer()} | nil,
          integer() | nil
        ) ::
          t()
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

  @doc "The newer of two shares by their views (`pending` may be `nil`)."
  @spec newest(t(), t() | nil) :: t()
  def newest(share, nil), do: share

  def newest(share, pending),
    do: if(newer?(view(share), view(pending)), do: share, else: pending)

  @doc "The view key of a share."
  @spec view(t()) :: {integer(), non_neg_integer()}
  def view(%__MODULE__{listed_at: listed_at, seq: seq}), do: {listed_at, seq}

  @doc """
  The wire forms of a share: version 3, and for a share with a view, version
  2 too, for nodes of the previous release.
  """
  @spec encode(t()) :: [tuple()]
  def encode(%__MODULE__{} = share) do
    v3 =
      {@tag, @version, share.topology,
       %{
         from: share.from,
         fingerprint: share.fingerprint,
         interval: share.interval,
         seq: share.seq,
         listed_at: share.listed_at,
         not_before: share.not_before,
         verdicts: share.verdicts && Enum.map(share.verdicts, &verdict_to_wire/1),
         pool: share.pool
       }}

    [v3 | if(share.verdicts, do: [v2(share)], else: [])]
  end

  defp v2(share) do
    droplets =
      for %Verdict{stage: stage} = v <- share.verdicts,
          stage not in [:outside_filters, :not_active, :no_address],
          do: {v.name, v.address}

    {@tag, 2, share.topology,
     %{
       from: share.from,
       fingerprint: share.fingerprint,
       interval: share.interval,
       seq: share.seq,
       listed_at: share.listed_at,
       droplets: droplets
     }}
  end

  defp verdict_to_wire(%Verdict{} = v),
    do: {v.id, v.name, v.status, v.address, v.stage, v.node, v.why}

  @doc """
  Reads a share, or tells why it cannot. `decode/2` also checks its
  topology: a readable share of another one is `:other_topology`.

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
    share = %__MODULE__{
      version: version,
      topology: topology,
      from: payload[:from],
      fingerprint: payload[:fingerprint],
      interval: payload[:interval],
      seq: payload[:seq],
      listed_at: payload[:listed_at]
    }

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

  # The leader's pool, for the explain of its followers (absent before 3).
  defp pool(nil), do: {:ok, nil}

  defp pool(%{id: id, name: name, tags: tags, members: members, active: active} = pool)
       when is_binary(id) and is_binary(name) and is_list(tags) and is_integer(members) and
              is_integer(active),
       do: {:ok, Map.take(pool, [:id, :name, :tags, :members, :active])}

  defp pool(_other), do: :error

  # Every element read by `read`, in order, or :error; nil (a notice) is
  # kept. A list of any shape (improper too) is walked by hand: a share is
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

    if (stage in [:selected, :this_node, :duplicate] and not named?) or not why?(stage, why),
      do: :error,
      else:
        {:ok,
         %Verdict{
           id: id,
           name: name,
           status: status,
           address: address,
           stage: stage,
           node: node,
           why: why
         }}
  end

  defp verdict_from_wire(_other), do: :error

  # What a stage may carry as its `why`, as LibclusterDroplet.Pipeline makes it.
  defp why?(:outside_filters, why), do: match?({:ok, [_ | _]}, each(why, &outside/1))

  defp why?(:unusable_name, {reason, base})
       when reason in [:invalid_basename, :invalid_address] and is_binary(base),
       do: true

  defp why?(stage, nil) when stage not in [:outside_filters, :unusable_name], do: true
  defp why?(_stage, _why), do: false

  defp outside({option, _value} = outside) when is_atom(option),
    do: if(option in LibclusterDroplet.Filters.options(), do: {:ok, outside}, else: :error)

  defp outside(_other), do: :error

  defp droplet({name, address} = d) when is_binary(name) and is_binary(address), do: {:ok, d}
  defp droplet(_), do: :error

  @doc """
  A floor notice: any node whose response set a rate-limit floor tells the
  strategies of its topology on the connected nodes, leaders included, so
  none of them sends a request before it. Raise-only: receivers under the
  same `fingerprint` raise their floor to `not_before`, whoever sent it.
  """
  @spec floor(atom(), non_neg_integer(), integer()) :: tuple()
  def floor(topology, fingerprint, not_before),
    do: {@tag, :floor, topology, %{fingerprint: fingerprint, not_before: not_before}}

  @doc false
  @spec decode(term(), atom()) ::
          {:ok, t()}
          | {:floor, non_neg_integer(), integer()}
          | :other_topology
          | {:error, error()}
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

  @doc """
  Sends a share's wire forms to the process registered as `name` on each
  of `nodes`, never setting up a connection of its own (`:noconnect`).
  """
  @spec send(t() | tuple(), atom(), [node()]) :: :ok
  def send(share, name, nodes) do
    messages = if is_struct(share, __MODULE__), do: encode(share), else: [share]
    for node <- nodes, message <- messages, do: :erlang.send({name, node}, message, [:noconnect])
    :ok
  end

  @doc "Why a share could not be read, in words."
  @spec describe_error(error()) :: String.t()
  def describe_error({:unsupported_version, v}),
    do: "protocol version #{inspect(v)}, this node speaks #{@version} and 2"

  def describe_error(:malformed), do: "malformed"

  @doc "The sender named in a share of any version, when it can be found."
  @spec sender(term()) :: node() | nil
  def sender({@tag, _version, _topology, %{from: from}}) when is_atom(from), do: from
  def sender({@tag, _topology, from, _fingerprint, _droplets}) when is_atom(from), do: from
  def sender(_message), do: nil
end
