defmodule LibclusterDroplet.Schedule do
  @moduledoc """
  When the next poll may go out: pure functions, so the rules are unit
  tested without clocks.

    * **Success** returns to `polling_interval`, stretched when the token's
      hourly budget runs low (see `pace/3`).
    * **Failure** backs off exponentially with jitter:
      `polling_interval * 2^failures`, capped at `max_backoff`, drawn
      uniformly from its upper half, so a fleet that failed together does not
      retry together.
    * **Rate limits** are a floor: after a 429 nothing is sent before its
      `retry-after` has passed, or before `ratelimit-reset` when
      `ratelimit-remaining` is 0.
  """

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

  @doc """
  The interval to wait after a successful poll that made `requests` HTTP
  requests: `interval`, stretched when the budget is low.

  While more than a quarter of the hourly limit remains, polls go out every
  `interval`. Below that, the interval grows so that, at this pace, what
  remains lasts until the window has refilled: `requests / remaining` of an
  hour, i.e. the wait that spends the remaining budget evenly over the next
  hour (the window is sliding, so an hour from now every request counted
  now has expired). Other clients of the same token are accounted for
  because `remaining` is the token's, not ours.
  """
  @spec pace(pos_integer(), rate_limit(), pos_integer()) :: pos_integer()
  def pace(interval, %{limit: limit, remaining: remaining}, requests)
      when is_integer(limit) and limit > 0 and is_integer(remaining) and remaining * 4 < limit do
    stretched = div(3_600_000 * max(requests, 1), max(remaining, 1))
    max(interval, stretched)
  end

  def pace(interval, _rate_limit, _requests), do: interval
end
