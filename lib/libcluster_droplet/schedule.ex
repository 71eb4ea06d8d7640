defmodule LibclusterDroplet.Schedule do
  @moduledoc false
  # When the next poll may go out: pure functions, so the rules are unit
  # tested without clocks.
  #
  #   * **Success** returns to `polling_interval`, stretched when polls are
  #     costly or the token's hourly budget runs low (see `pace/5`).
  #   * **Failure** backs off exponentially with jitter:
  #     `polling_interval * 2^failures`, capped at `max_backoff`, drawn
  #     uniformly from its upper half, so a fleet that failed together does not
  #     retry together.
  #   * **Rate limits** are a floor: after a 429 nothing is sent before its
  #     `retry-after` has passed, or before `ratelimit-reset` when
  #     `ratelimit-remaining` is 0.

  @typedoc "Rate-limit headers as `LibclusterDroplet.rate_limit()`."
  @type rate_limit :: LibclusterDroplet.rate_limit() | nil

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

  @doc """
  The earliest time (Unix ms) the API may be called again after a response
  with these headers, or `nil` if there is no such floor.

    * a 429 with a `retry-after` (or a computed wait) of `seconds`;
    * any response with `remaining: 0`: wait until `reset`.
  """
  @spec not_before(rate_limit(), {:rate_limited, non_neg_integer() | nil} | nil, integer()) ::
          integer() | nil
  def not_before(rate_limit, rate_limited, now_ms) do
    retry =
      case rate_limited do
        {:rate_limited, seconds} when is_integer(seconds) -> now_ms + seconds * 1000
        _ -> nil
      end

    retry_header =
      case rate_limit do
        %{retry_after: seconds} when is_integer(seconds) -> now_ms + seconds * 1000
        _ -> nil
      end

    exhausted =
      case rate_limit do
        %{remaining: 0, reset: reset} when is_integer(reset) -> max(reset * 1000, now_ms + 1000)
        %{remaining: 0} -> now_ms + 60_000
        _ -> nil
      end

    [retry, retry_header, exhausted] |> Enum.reject(&is_nil/1) |> Enum.max(fn -> nil end)
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
  `interval`, stretched by two budgets.

    * **Burst.** DigitalOcean allows 250 requests per minute per token. A poll
      of many pages (50 for 10,000 droplets) every few seconds would break
      it alone, so polls are spaced to keep this strategy's own traffic
      within `max_per_minute` (by default half of that limit).
    * **Hourly budget.** While more than a quarter of `limit` remains,
      nothing changes. Below that, the next poll waits long enough that, at
      this pace, the `remaining` requests last until `reset`, when the
      oldest counted request leaves DigitalOcean's sliding window and the
      budget starts to refill. `remaining` counts every client of the token,
      so other users of it slow us down too. When nothing remains the wait
      is `reset` itself (see `not_before/3`).

  `now_ms` is the current Unix time in ms.
  """
  @spec pace(pos_integer(), rate_limit(), pos_integer(), integer(), pos_integer()) ::
          pos_integer()
  def pace(interval, rate_limit, requests, now_ms, max_per_minute) do
    requests = max(requests, 1)
    burst = div(requests * 60_000 + max_per_minute - 1, max_per_minute)
    interval |> max(burst) |> max(spread(rate_limit, requests, now_ms))
  end

  defp spread(%{limit: limit, remaining: remaining, reset: reset}, requests, now_ms)
       when is_integer(limit) and limit > 0 and is_integer(remaining) and remaining * 4 < limit and
              is_integer(reset) do
    until_reset = max(reset * 1000 - now_ms, 0)
    div(until_reset * requests, max(remaining, 1))
  end

  defp spread(_rate_limit, _requests, _now_ms), do: 0
end
