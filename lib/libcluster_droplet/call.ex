defmodule LibclusterDroplet.Call do
  @moduledoc """
  A NIF call in flight, as `LibclusterDroplet.start_list_droplets/1` and
  `LibclusterDroplet.start_probe/3` return it.

    * `:ref` - the reference the answer message carries.
    * `:handle` - the call's handle. The call lives as long as its handle:
      once the handle is garbage collected (the caller died, or dropped the
      call) or given to `LibclusterDroplet.cancel/1`, no new probe or page
      starts, its threads exit once the work item in hand ends, and the
      answer, if anyone is left to read it, is `{:error, :cancelled}`.
      Keep the call referenced until its answer has arrived.
    * `:concurrency` - how many work items (probes, pages) the call really
      runs at once: the number asked for, capped per call and by what the
      NIF's thread budget had free when it started; at least 1.
  """

  @enforce_keys [:ref, :handle, :concurrency]
  defstruct [:ref, :handle, :concurrency]

  @type t :: %__MODULE__{ref: reference(), handle: reference(), concurrency: pos_integer()}

  @doc """
  How many rounds of at most `concurrency` items `count` items take: a
  probe call's black holes each cost one timeout per round.

      iex> call = %LibclusterDroplet.Call{ref: make_ref(), handle: make_ref(), concurrency: 512}
      iex> {LibclusterDroplet.Call.waves(call, 0), LibclusterDroplet.Call.waves(call, 512), LibclusterDroplet.Call.waves(call, 513)}
      {0, 1, 2}
  """
  @spec waves(t(), non_neg_integer()) :: non_neg_integer()
  def waves(%__MODULE__{concurrency: concurrency}, count)
      when is_integer(count) and count >= 0 and concurrency >= 1,
      do: div(count + concurrency - 1, concurrency)
end
