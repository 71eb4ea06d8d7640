defmodule LibclusterDroplet.Schedule do
  @reset_margin 1_000
  @max_paced_wait 15 * 60_000

  @moduledoc """
  When the next poll may go out: pure functions, so the rules are unit
  tested without clocks.

    * **Success** returns to `polling_interval`, stretched when polls are
      costly or the token's hourly budget runs low (see `pace/5`).
    * **Failure** backs off exponentially with jitter:
      `polling_interval * 2^failures`, capped at `max_backoff`, drawn
      uniformly from its upper half, so a fleet that failed together does not
      retry together.
    * **Rate limits** are a floor, kept by `LibclusterDroplet.Floor`.
    * **Every paced wait is capped**: at the time left until
      `ratelimit-reset` (plus #{div(@reset_margin, 1000)} s), when the budget
      refills, and at #{div(@max_paced_wait, 60_000)} minutes, so that new
      and removed droplets are never noticed hours late.
  """

  @typedoc "Rate-limit headers as `LibclusterDroplet.rate_limit()`."
  @type rate_limit :: LibclusterDroplet.rate_limit() | nil

  defstruct failures: 0,
            next_poll_at: nil,
            rate_limit: nil,
            stretch: 1,
            polls: 0,
            last_poll_at: nil,
            last_error: nil

  @typedoc """
  A strategy's record of its API polls: consecutive `failures` and the
  `last_error` (`{class, message}`), when the next poll is due after a
  failure (`next_poll_at`, Unix ms, kept across restarts), the last
  `rate_limit` headers, the `stretch` factor (`stretch/3`), successful
  `polls` and the time of the last (`last_poll_at`, Unix ms).
  """
  @type t :: %__MODULE__{
          failures: non_neg_integer(),
          next_poll_at: integer() | nil,
          rate_limit: rate_limit(),
          stretch: pos_integer(),
          polls: non_neg_integer(),
          last_poll_at: integer() | nil,
          last_error: {atom(), String.t()} | nil
        }

  @doc """
  A listing arrived: the budget it reports is noted, and the wait before
  the next poll returned (`pace/6`, `stretch/3`), with the schedule.
  """
  @spec listed(t(), LibclusterDroplet.Listing.t(), map(), integer()) :: {pos_integer(), t()}
  def listed(%__MODULE__{} = s, listing, config, now_ms) do
    stretch = stretch(s.stretch, s.rate_limit, listing.rate_limit)
    requests = listing.requests
    per_minute = config.max_requests_per_minute

    wait =
      pace(config.polling_interval, stretch, listing.rate_limit, requests, now_ms, per_minute)

    {wait, %{s | rate_limit: listing.rate_limit, stretch: stretch}}
  end

  @doc "A poll succeeded at `now_ms`."
  @spec succeeded(t(), integer()) :: t()
  def succeeded(%__MODULE__{} = s, now_ms),
    do: %{s | failures: 0, polls: s.polls + 1, last_poll_at: now_ms, next_poll_at: nil}

  @doc """
  A poll failed with `reason` (and `rate_limit`, the headers of its last
  response, when there was one): the wait before the next poll, at least
  `floor_wait`, and the schedule.
  """
  @spec failed(t(), term(), rate_limit(), map(), non_neg_integer(), integer()) ::
          {pos_integer(), t()}
  def failed(%__MODULE__{} = s, reason, rate_limit, config, floor_wait, now_ms) do
    failures = s.failures + 1
    wait = max(backoff(config.polling_interval, failures, config.max_backoff), floor_wait)
    error = {LibclusterDroplet.Error.class(reason), LibclusterDroplet.Error.format(reason)}

    {wait,
     %{
       s
       | failures: failures,
         last_error: error,
         next_poll_at: now_ms + wait,
         rate_limit: rate_limit || s.rate_limit
     }}
  end

  @doc """
  The backoff delay in ms after `failures` consecutive failures (≥ 1).

  `rand` is a float in `[0, 1)`; the result lies in `[cap / 2, cap]` where
  `cap = min(max_backoff, interval * 2^failures)`, and never below `interval`
  unless `max_backoff` is.
  """
  @spec backoff(pos_integer(), pos_integer(), pos_integer(), float()) :: pos_integer()
  def backoff(interval, failures, max_backoff, rand \\ :rand.uniform())
      when failures >= 1 and rand >= 0 and rand < 1 do
    # 2^failures overflows nothing in Elixir, but there is no point past the cap.
    cap = min(max_backoff, interval * Integer.pow(2, min(failures, 32)))
    floor = min(max(div(cap, 2), interval), cap)
    max(1, floor + trunc((cap - floor) * rand))
  end

  @max_stretch 64

  @doc """
  How long the NIF keeps an idle connection to the API open: the longest
  gap this schedule makes between two polls outside rate-limit waits, the
  interval stretched the most or the backoff cap, whichever is longer, so
  that a stretched or backed-off poll still rides on a kept-alive
  connection instead of paying DNS, TCP and TLS again. Capped at a day,
  the NIF's bound.

      iex> LibclusterDroplet.Schedule.keep_alive(5_000, 60_000)
      320000
      iex> LibclusterDroplet.Schedule.keep_alive(1_000, 600_000)
      600000
  """
  @spec keep_alive(pos_integer(), pos_integer()) :: pos_integer()
  def keep_alive(interval, max_backoff),
    do: min(max(interval * @max_stretch, max_backoff), 86_400_000)

  @doc """
  The factor by which the polling interval is stretched after a response
  with `rate_limit`, when the previous one had `previous`.

  The hourly window slides and other clients may share the token, so no
  single response tells how fast the budget is going. The trend does: while
  less than a quarter of the budget remains *and* `remaining` keeps falling
  from one poll to the next, the factor doubles (up to #{@max_stretch}); while
  it is low but steady or rising, it holds; once a quarter or more
  remains, it halves back towards 1.

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
  The wait in ms after a successful poll that made `requests` HTTP requests:
  `interval` times `stretch` (see `stretch/3`), lengthened by two budgets,
  and capped.

    * **Burst.** DigitalOcean allows 250 requests per minute per token. A poll
      of many pages (50 for 10,000 droplets) every few seconds would break
      it alone, so polls are spaced to keep this strategy's own traffic
      within `max_per_minute` (by default half of that limit).
    * **Hourly budget.** While more than a quarter of `limit` remains,
      nothing changes. Below that, the next poll waits long enough that, at
      this pace, the `remaining` requests last until `reset`, when the
      oldest counted request leaves DigitalOcean's sliding window and the
      budget starts to refill. `remaining` counts every client of the token,
      so other users of it slow us down too. The spread never goes past
      `reset` (plus #{div(@reset_margin, 1000)} s). When nothing remains the
      floor holds until `reset` (see `LibclusterDroplet.Floor`).
    * **Cap.** The wait is at most #{div(@max_paced_wait, 60_000)} minutes, or
      `interval` when that is longer.

  `now_ms` is the current Unix time in ms.

      iex> low = %{limit: 5000, remaining: 1, reset: 60, retry_after: nil}
      iex> LibclusterDroplet.Schedule.pace(5_000, 1, low, 50, 0, 125)
      61000
      iex> LibclusterDroplet.Schedule.pace(5_000, 1, %{low | reset: 36_000}, 50, 0, 125)
      900000
  """
  @spec pace(
          pos_integer(),
          pos_integer(),
          rate_limit(),
          pos_integer(),
          integer(),
          pos_integer()
        ) :: pos_integer()
  def pace(interval, stretch, rate_limit, requests, now_ms, max_per_minute) do
    requests = max(requests, 1)
    burst = div(requests * 60_000 + max_per_minute - 1, max_per_minute)
    wait = (interval * stretch) |> max(burst) |> max(spread(rate_limit, requests, now_ms))
    min(wait, max(@max_paced_wait, interval))
  end

  @doc "The longest wait `pace/5` ever gives, for an interval below it."
  @spec max_paced_wait() :: pos_integer()
  def max_paced_wait, do: @max_paced_wait

  # The remaining budget spread until `reset`, but never past it: once the
  # window slides, the budget refills.
  defp spread(%{limit: limit, remaining: remaining, reset: reset}, requests, now_ms)
       when is_integer(limit) and limit > 0 and is_integer(remaining) and remaining * 4 < limit and
              is_integer(reset) do
    until_reset = max(reset * 1000 - now_ms, 0)
    min(div(until_reset * requests, max(remaining, 1)), until_reset + @reset_margin)
  end

  defp spread(_rate_limit, _requests, _now_ms), do: 0
end
