defmodule LibclusterDroplet.Share do
  @moduledoc false
  # The message a polling node sends to the strategy on every other node:
  # what its last listing selected, so that the others need not poll.
  #
  # A share is versioned. On the wire it is
  #
  #     {:libcluster_droplet_share, 2, topology, %{from: node, fingerprint: integer,
  #       interval: ms, seq: integer, listed_at: unix_ms, droplets: [{name, address}]}}
  #
  # `listed_at` is the leader's clock when the listing started and `seq` its
  # count of polls; together they order views (see `newer?/2`), so a share
  # that arrives late never undoes a fresher view. `interval` is how long the
  # leader waits before its next poll (its `polling_interval`, stretched and
  # paced when the token's budget runs low): followers judge its silence by
  # it, not by their own interval.
  #
  # `decode/1` accepts only what this version can read. Anything else tagged
  # `:libcluster_droplet_share` (another release during a rolling upgrade, a
  # corrupted term) is `{:error, reason}`: the strategy logs it once per
  # sender and ignores it, and membership never changes because of it.

  @version 2
  @tag :libcluster_droplet_share

  @enforce_keys [:topology, :from, :fingerprint, :interval, :seq, :listed_at, :droplets]
  defstruct @enforce_keys

  @typedoc "A selected droplet as shared: its name and chosen address."
  @type droplet :: {name :: String.t(), address :: String.t()}

  @type t :: %__MODULE__{
          topology: atom(),
          from: node(),
          fingerprint: non_neg_integer(),
          interval: pos_integer(),
          seq: non_neg_integer(),
          listed_at: integer(),
          droplets: [droplet()]
        }

  @typedoc "Why a share could not be read: another protocol version (1 is the unversioned share of earlier releases), or a term of no known shape."
  @type error :: {:unsupported_version, integer()} | :malformed

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

  @doc "The view key of a share."
  @spec view(t()) :: {integer(), non_neg_integer()}
  def view(%__MODULE__{listed_at: listed_at, seq: seq}), do: {listed_at, seq}

  @payload [:from, :fingerprint, :interval, :seq, :listed_at, :droplets]

  @doc "The wire form of a share."
  @spec encode(t()) :: tuple()
  def encode(%__MODULE__{} = share),
    do: {@tag, @version, share.topology, share |> Map.from_struct() |> Map.take(@payload)}

  @doc """
  Reads a share, or tells why it cannot.

      iex> share = %LibclusterDroplet.Share{topology: :t, from: :"a@h", fingerprint: 1,
      ...>   interval: 5_000, seq: 3, listed_at: 1_700_000_000_000, droplets: [{"a", "10.0.0.2"}]}
      iex> LibclusterDroplet.Share.decode(LibclusterDroplet.Share.encode(share)) == {:ok, share}
      true
      iex> LibclusterDroplet.Share.decode({:libcluster_droplet_share, :t, :"a@h", 1, []})
      {:error, {:unsupported_version, 1}}
  """
  @spec decode(term()) :: {:ok, t()} | {:error, error()}
  def decode({@tag, @version, topology, %{} = payload}) when is_atom(topology) do
    share = struct(__MODULE__, payload |> Map.take(@payload) |> Map.put(:topology, topology))
    if valid?(share), do: {:ok, share}, else: {:error, :malformed}
  end

  def decode({@tag, @version, _topology, _payload}), do: {:error, :malformed}

  # The unversioned share of earlier releases.
  def decode({@tag, topology, from, _fingerprint, droplets})
      when is_atom(topology) and is_atom(from) and is_list(droplets),
      do: {:error, {:unsupported_version, 1}}

  def decode(message) when tuple_size(message) >= 2 and is_integer(elem(message, 1)),
    do: {:error, {:unsupported_version, elem(message, 1)}}

  def decode(_message), do: {:error, :malformed}

  @doc """
  Sends an encoded share to the process registered as `name` on each of
  `nodes`, never setting up a connection of its own (`:noconnect`).
  """
  @spec send(tuple(), atom(), [node()]) :: :ok
  def send(message, name, nodes) do
    Enum.each(nodes, &:erlang.send({name, &1}, message, [:noconnect]))
  end

  @doc "Why a share could not be read, in words."
  @spec describe_error(error()) :: String.t()
  def describe_error({:unsupported_version, v}),
    do: "protocol version #{inspect(v)}, this node speaks #{@version}"

  def describe_error(:malformed), do: "malformed"

  @doc "The sender named in a share of any version, when it can be found."
  @spec sender(term()) :: node() | nil
  def sender({@tag, _version, _topology, %{from: from}}) when is_atom(from), do: from
  def sender({@tag, _topology, from, _fingerprint, _droplets}) when is_atom(from), do: from
  def sender(_message), do: nil

  defp valid?(%__MODULE__{} = s) do
    is_atom(s.from) and s.from != nil and is_integer(s.fingerprint) and is_integer(s.interval) and
      s.interval > 0 and
      is_integer(s.seq) and s.seq >= 0 and is_integer(s.listed_at) and is_list(s.droplets) and
      Enum.all?(s.droplets, &droplet?/1)
  end

  defp droplet?({name, address}) when is_binary(name) and is_binary(address), do: true
  defp droplet?(_), do: false
end
