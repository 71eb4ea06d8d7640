defmodule LibclusterDroplet.ScheduleTest do
  @moduledoc false
  # When the next poll goes out: backoff, stretch, pace and its caps, and
  # the schedule record a strategy keeps.
  use ExUnit.Case, async: true

  alias LibclusterDroplet.{Listing, Schedule}

  doctest LibclusterDroplet.Schedule

  @now 1_700_000_000_000
  @config %{polling_interval: 5_000, max_backoff: 60_000, max_requests_per_minute: 125}

  defp rl(remaining, reset_in_s \\ 600),
    do: %{
      limit: 5_000,
      remaining: remaining,
      reset: div(@now, 1000) + reset_in_s,
      retry_after: nil
    }

  describe "backoff/4" do
    test "doubles per failure, within the upper half of the window" do
      assert Schedule.backoff(1_000, 1, 60_000, 0.0) == 1_000
      assert Schedule.backoff(1_000, 1, 60_000, 0.999) in 1_990..2_000
      assert Schedule.backoff(1_000, 2, 60_000, 0.0) == 2_000
      assert Schedule.backoff(1_000, 3, 60_000, 0.0) == 4_000
      assert Schedule.backoff(1_000, 3, 60_000, 0.5) == 6_000
    end

    test "is capped by max_backoff however many failures" do
      for failures <- [6, 7, 50, 10_000] do
        assert Schedule.backoff(1_000, failures, 60_000, 0.999) <= 60_000
        assert Schedule.backoff(1_000, failures, 60_000, 0.0) >= 30_000
      end
    end

    test "jitter spreads a fleet that failed together" do
      delays = for _ <- 1..200, do: Schedule.backoff(1_000, 4, 60_000)
      assert Enum.min(delays) >= 8_000 and Enum.max(delays) <= 16_000
      assert length(Enum.uniq(delays)) > 50
    end

    test "never below the polling interval, unless the cap is" do
      assert Schedule.backoff(5_000, 1, 60_000, 0.0) >= 5_000
      assert Schedule.backoff(5_000, 1, 2_000, 0.0) == 2_000
    end
  end

  describe "stretch/3" do
    defp limit(remaining), do: %{limit: 5_000, remaining: remaining, reset: 0, retry_after: nil}

    test "doubles while the budget is low and falling, up to 64" do
      assert Schedule.stretch(1, limit(1_100), limit(1_000)) == 2
      assert Schedule.stretch(32, limit(1_100), limit(1_000)) == 64
      assert Schedule.stretch(64, limit(1_100), limit(1_000)) == 64
    end

    test "holds while low but steady or rising, halves back once a quarter remains" do
      assert Schedule.stretch(8, limit(1_000), limit(1_000)) == 8
      assert Schedule.stretch(8, limit(900), limit(1_000)) == 8
      assert Schedule.stretch(8, limit(1_000), limit(1_250)) == 4
      assert Schedule.stretch(1, limit(4_000), limit(3_000)) == 1
    end

    test "without headers there is nothing to go by" do
      assert Schedule.stretch(8, limit(1_000), nil) == 1
      assert Schedule.stretch(4, nil, limit(100)) == 4
    end
  end

  describe "pace/6" do
    test "the interval stands while polls are cheap and a quarter of the budget remains" do
      assert Schedule.pace(5_000, 1, rl(1_250), 1, @now, 125) == 5_000
      assert Schedule.pace(5_000, 1, nil, 1, @now, 125) == 5_000
      assert Schedule.pace(5_000, 4, rl(4_000), 1, @now, 125) == 20_000
    end

    test "many-page polls are spaced to stay within the per-minute budget" do
      # 50 requests (10,000 droplets) at most 125 a minute: one poll every 24 s.
      assert Schedule.pace(5_000, 1, rl(4_000), 50, @now, 125) == 24_000
      assert Schedule.pace(5_000, 1, rl(4_000), 5, @now, 125) == 5_000
      assert Schedule.pace(100, 1, nil, 1, @now, 125) == 480
      assert Schedule.pace(100, 1, nil, 1, @now, 6_000) == 100
      # A poll that made no request counts as one.
      assert Schedule.pace(100, 1, nil, 0, @now, 125) == 480
    end

    test "below a quarter of the budget, what remains is spread until the reset" do
      # 100 left, 10 minutes to the reset, 1 request per poll: one poll every 6 s.
      assert Schedule.pace(1_000, 1, rl(100), 1, @now, 6_000) == 6_000
      assert Schedule.pace(1_000, 1, rl(100), 5, @now, 6_000) == 30_000
      assert Schedule.pace(60_000, 1, rl(100), 1, @now, 6_000) == 60_000
      # A reset in the past does not stall polling.
      assert Schedule.pace(1_000, 1, %{rl(10) | reset: 1}, 1, @now, 6_000) == 1_000
      # Headers without a reset spread nothing.
      assert Schedule.pace(1_000, 1, %{rl(10) | reset: nil}, 1, @now, 6_000) == 1_000
    end

    test "the spread is capped at the time left until the reset, plus a second" do
      # 1 remaining, reset in 60 s, 50 requests: 50 minutes uncapped.
      assert Schedule.pace(5_000, 1, rl(1, 60), 50, @now, 6_000) == 61_000
      # Nothing left: until the reset (the floor holds the request back until then).
      assert Schedule.pace(1_000, 1, rl(0), 1, @now, 6_000) == 600_000
      assert Schedule.pace(1_000, 1, rl(0, 30), 3, @now, 6_000) == 31_000
    end

    test "and at 15 minutes: 1 remaining, an hour to the reset, 50 requests is 15 min, not 50 h" do
      wait = Schedule.pace(5_000, 1, rl(1, 3_600), 50, @now, 125)
      assert wait == 15 * 60_000
      assert Schedule.max_paced_wait() == 900_000

      # Stretched to the most, the interval is capped too.
      assert Schedule.pace(30_000, 64, rl(1_000, 60), 1, @now, 125) == 900_000
    end

    test "an interval longer than the cap stands" do
      assert Schedule.pace(1_800_000, 1, rl(1, 3_600), 50, @now, 125) == 1_800_000
      assert Schedule.pace(1_800_000, 4, nil, 1, @now, 125) == 1_800_000
    end
  end

  describe "the schedule" do
    defp listing(requests, rate_limit, droplets \\ 1),
      do: %Listing{
        droplets: List.duplicate(%{}, droplets),
        total: droplets,
        requests: requests,
        rate_limit: rate_limit
      }

    test "listed/4: 1,000 droplets with 3 requests remaining wait at most 15 minutes" do
      # 5 pages of 200, an hour to the reset: spread, 100 minutes; capped.
      {wait, schedule} =
        Schedule.listed(%Schedule{}, listing(5, rl(3, 3_600), 1_000), @config, @now)

      assert wait == Schedule.max_paced_wait()
      assert schedule.rate_limit == rl(3, 3_600)
    end

    test "listed/4 notes the budget and stretches while it falls" do
      {wait, s} = Schedule.listed(%Schedule{}, listing(1, rl(1_100, 1)), @config, @now)
      assert {wait, s.stretch, s.rate_limit} == {5_000, 1, rl(1_100, 1)}

      {wait, s} = Schedule.listed(s, listing(1, rl(1_000, 1)), @config, @now)
      assert {wait, s.stretch} == {10_000, 2}

      {wait, s} = Schedule.listed(s, listing(1, rl(900, 1)), @config, @now)
      assert {wait, s.stretch} == {20_000, 4}

      # A quarter or more left: back towards the interval.
      {wait, s} = Schedule.listed(s, listing(1, rl(2_000, 1)), @config, @now)
      assert {wait, s.stretch} == {10_000, 2}

      # The per-minute budget is the config's.
      {wait, _} = Schedule.listed(%Schedule{}, listing(50, nil), @config, @now)
      assert wait == 24_000

      {wait, _} =
        Schedule.listed(
          %Schedule{},
          listing(50, nil),
          %{@config | max_requests_per_minute: 6_000},
          @now
        )

      assert wait == 5_000
    end

    test "succeeded/2 counts the poll and forgets failures" do
      s = %Schedule{failures: 3, next_poll_at: @now + 10_000, polls: 4}

      assert %Schedule{failures: 0, next_poll_at: nil, polls: 5, last_poll_at: @now} =
               Schedule.succeeded(s, @now)
    end

    test "failed/6 backs off, never below the floor, and keeps when the next poll is due" do
      {wait, s} = Schedule.failed(%Schedule{}, :timeout, nil, @config, 0, @now)
      assert wait in 5_000..10_000
      assert %Schedule{failures: 1, next_poll_at: next, last_error: {:timeout, message}} = s
      assert next == @now + wait
      assert message == LibclusterDroplet.Error.format(:timeout)

      {wait, s} = Schedule.failed(s, {:http_status, 503}, nil, @config, 0, @now)
      assert wait in 10_000..20_000
      assert %Schedule{failures: 2, last_error: {:http_status, _}} = s

      # A floor longer than the backoff wins.
      {wait, s} = Schedule.failed(s, {:rate_limited, 300}, rl(0), @config, 300_000, @now)
      assert wait == 300_000
      assert s.next_poll_at == @now + 300_000
      assert s.rate_limit == rl(0)

      # A failure without headers keeps the last ones.
      {_, s} = Schedule.failed(s, :timeout, nil, @config, 0, @now)
      assert s.rate_limit == rl(0)
      assert s.failures == 4
      assert %Schedule{failures: 0} = Schedule.succeeded(s, @now)
    end

    test "failed/6's backoff is capped by max_backoff" do
      s = %Schedule{failures: 40}
      {wait, _} = Schedule.failed(s, :timeout, nil, %{@config | max_backoff: 7_000}, 0, @now)
      assert wait in 5_000..7_000
    end
  end
end
