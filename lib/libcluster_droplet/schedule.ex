defmodule LibclusterDroplet.Schedule do
  @moduledoc false
  # When the next poll may go out, as pure functions (guides/reliability.md,
  # "Backoff" and "Rate limits"): after a success, `polling_interval`
  # stretched and paced on the rate-limit budget; after a failure, an
  # exponential backoff with jitter; every paced wait capped. The floor a
  # 429 sets is LibclusterDroplet.Floor's.

  @reset_margin 1_000
  @max_paced_wait 15 * 60_000
  @max_stretch 64

  # `next_poll_at` (Unix ms, kept across restarts) is set after a failure;
  # `last_error` is `{class, message}`; `stretch` is stretch/3's factor.
  defstruct failures: 0,
            next_poll_at: nil,
            rate_limit: nil,
            stretch: 1,
            polls: 0,
            last_poll_at: nil,
            last_error: nil

  @type t :: %__MODULE__{}
  @type rate_limit :: LibclusterDroplet.rate_limit() | nil

  # A listing arrived: its budget is noted; returns the wait before the
  # next poll, and the schedule.
  @spec listed(t(), LibclusterDroplet.Listing.t(), map(), integer()) :: {pos_integer(), t()}
  def listed(%__MODULE__{} = s, listing, config, now_ms) do
    rate_limit = listing.rate_limit
    stretch = stretch(s.stretch, s.rate_limit, rate_limit)
    per_minute = config.max_requests_per_minute

    wait =
      pace(config.polling_interval, stretch, rate_limit, listing.requests, now_ms, per_minute)

    {wait, %{s | rate_limit: rate_limit, stretch: stretch}}
  end

  def succeeded(%__MODULE__{} = s, now_ms),
    do: %{s | failures: 0, polls: s.polls + 1, last_poll_at: now_ms, next_poll_at: nil}

  # A poll failed with `reason` (`rate_limit`: its last response's headers):
  # the wait before the next poll, at least `floor_wait`, and the schedule.
  @spec failed(t(), term(), rate_limit(), map(), non_neg_integer(), integer()) ::
          {pos_integer(), t()}
  def failed(%__MODULE__{} = s, reason, rate_limit, config, floor_wait, now_ms) do
    failures = s.failures + 1
    wait = max(backoff(config.polling_interval, failures, config.max_backoff), floor_wait)
    error = {LibclusterDroplet.Error.class(reason), LibclusterDroplet.Error.format(reason)}
    s = %{s | failures: failures, last_error: error, next_poll_at: now_ms + wait}
    {wait, %{s | rate_limit: rate_limit || s.rate_limit}}
  end

  # The backoff after `failures` (≥ 1) in a row: uniform in [cap / 2, cap]
  # with cap = min(max_backoff, interval * 2^failures), never below
  # `interval` unless `max_backoff` is. `rand` is in [0, 1).
  @spec backoff(pos_integer(), pos_integer(), pos_integer(), float()) :: pos_integer()
  def backoff(interval, failures, max_backoff, rand \\ :rand.uniform())
      when failures >= 1 and rand >= 0 and rand < 1 do
    cap = min(max_backoff, interval * Integer.pow(2, min(failures, 32)))
    floor = min(max(div(cap, 2), interval), cap)
    max(1, floor + trunc((cap - floor) * rand))
  end

  @doc """
  How long the NIF keeps an idle API connection open: the longest gap
  between polls outside rate-limit waits, at most a day.

      iex> LibclusterDroplet.Schedule.keep_alive(5_000, 60_000)
      320000
      iex> LibclusterDroplet.Schedule.keep_alive(1_000, 600_000)
      600000
  """
  @spec keep_alive(pos_integer(), pos_integer()) :: pos_integer()
  def keep_alive(interval, max_backoff),
    do: min(max(interval * @max_stretch, max_backoff), 86_400_000)

  @doc """
  The interval's stretch factor after a response with `rate_limit`, the
  previous one having had `previous`: below a quarter of the budget it
  doubles while `remaining` falls (up to #{@max_stretch}) and holds while
  it does not; from a quarter up it halves back towards 1.

      iex> low = %{limit: 5000, remaining: 900, reset: 0, retry_after: nil}
      iex> LibclusterDroplet.Schedule.stretch(1, %{low | remaining: 1000}, low)
      2
      iex> LibclusterDroplet.Schedule.stretch(4, %{low | remaining: 4000}, %{low | remaining: 4000})
      2
  """
  @spec stretch(pos_integer(), rate_limit(), rate_limit()) :: pos_integer()
  def stretch(factor, previous, %{limit: limit, remaining: remaining})
      when is_integer(limit) and limit > 0 and is_integer(remaining) do
    falling? =
      match?(%{remaining: before} when is_integer(before) and before > remaining, previous)

    cond do
      remaining * 4 >= limit -> max(div(factor, 2), 1)
      falling? -> min(factor * 2, @max_stretch)
      true -> factor
    end
  end

  def stretch(_factor, _previous, _rate_limit), do: 1

  @doc """
  The wait after a successful poll of `requests` requests: `interval`
  times `stretch`, no shorter than `max_per_minute` allows, nor than the
  remaining budget spread until `reset` (below a quarter of it), at most
  #{div(@max_paced_wait, 60_000)} minutes (or `interval`). `now_ms` is Unix ms.

      iex> low = %{limit: 5000, remaining: 1, reset: 60, retry_after: nil}
      iex> LibclusterDroplet.Schedule.pace(5_000, 1, low, 50, 0, 125)
      61000
      iex> LibclusterDroplet.Schedule.pace(5_000, 1, %{low | reset: 36_000}, 50, 0, 125)
      900000
  """
  @spec pace(pos_integer(), pos_integer(), rate_limit(), pos_integer(), integer(), pos_integer()) ::
          pos_integer()
  def pace(interval, stretch, rate_limit, requests, now_ms, max_per_minute) do
    requests = max(requests, 1)
    burst = div(requests * 60_000 + max_per_minute - 1, max_per_minute)
    wait = (interval * stretch) |> max(burst) |> max(spread(rate_limit, requests, now_ms))
    min(wait, max(@max_paced_wait, interval))
  end

  def max_paced_wait, do: @max_paced_wait

  # The remaining budget spread until `reset`, but never past it (plus a
  # margin): once the window slides, the budget refills.
  defp spread(%{limit: limit, remaining: remaining, reset: reset}, requests, now_ms)
       when is_integer(limit) and limit > 0 and is_integer(remaining) and remaining * 4 < limit and
              is_integer(reset) do
    until_reset = max(reset * 1000 - now_ms, 0)
    min(div(until_reset * requests, max(remaining, 1)), until_reset + @reset_margin)
  end

  defp spread(_rate_limit, _requests, _now_ms), do: 0
end
