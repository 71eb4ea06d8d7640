defmodule LibclusterDroplet.Call do
  @moduledoc """
  A NIF call in flight, as `LibclusterDroplet.start_list_droplets/1` and
  `LibclusterDroplet.start_probe/3` return it: the `ref` its answer
  carries, its `handle`, and the `concurrency` it runs at least (1 to what
  it asked for; see [the NIF's threads](reliability.md#the-nif-s-threads)).
  The call lives as long as its handle: once that is garbage collected or
  given to `LibclusterDroplet.cancel/1`, no new probe or page starts and
  the answer is `{:error, :cancelled}`. Keep it referenced.
  """

  @enforce_keys [:ref, :handle, :concurrency]
  defstruct [:ref, :handle, :concurrency]

  @type t :: %__MODULE__{ref: reference(), handle: reference(), concurrency: pos_integer()}

  @doc """
  How many rounds of at most `concurrency` items `count` items take (a
  probe call waits one timeout per round).

      iex> call = %LibclusterDroplet.Call{ref: make_ref(), handle: make_ref(), concurrency: 512}
      iex> {LibclusterDroplet.Call.waves(call, 0), LibclusterDroplet.Call.waves(call, 512), LibclusterDroplet.Call.waves(call, 513)}
      {0, 1, 2}
  """
  @spec waves(t(), non_neg_integer()) :: non_neg_integer()
  def waves(%__MODULE__{concurrency: concurrency}, count)
      when is_integer(count) and count >= 0 and concurrency >= 1,
      do: div(count + concurrency - 1, concurrency)
end
