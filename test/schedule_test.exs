defmodule LibclusterDroplet.ScheduleTest do
  use ExUnit.Case, async: true

  alias LibclusterDroplet.Schedule
  doctest LibclusterDroplet.Schedule

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

  describe "not_before/3" do
    @now 1_700_000_000_000

    test "no floor without rate-limit trouble" do
      assert Schedule.not_before(nil, nil, @now) == nil

      assert Schedule.not_before(
               %{limit: 5000, remaining: 10, reset: 1, retry_after: nil},
               nil,
               @now
             ) == nil
    end

    test "a 429's retry-after" do
      assert Schedule.not_before(nil, {:rate_limited, 7}, @now) == @now + 7_000

      assert Schedule.not_before(
               %{limit: 5000, remaining: 3, reset: 0, retry_after: 9},
               nil,
               @now
             ) == @now + 9_000
    end

    test "remaining 0 waits for the reset" do
      reset = div(@now, 1000) + 120
      rl = %{limit: 5000, remaining: 0, reset: reset, retry_after: nil}
      assert Schedule.not_before(rl, {:rate_limited, nil}, @now) == reset * 1000
      # The later of the two floors wins.
      assert Schedule.not_before(rl, {:rate_limited, 300}, @now) == @now + 300_000
    end

    test "remaining 0 with a reset in the past still waits a moment" do
      rl = %{limit: 5000, remaining: 0, reset: 1, retry_after: nil}
      assert Schedule.not_before(rl, nil, @now) == @now + 1_000
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

  describe "pace/5" do
    @now 1_700_000_000_000
    @reset div(@now, 1000) + 600

    defp rl(remaining), do: %{limit: 5_000, remaining: remaining, reset: @reset, retry_after: nil}

    test "the interval stands while polls are cheap and a quarter of the budget remains" do
      assert Schedule.pace(5_000, rl(1_250), 1, @now, 125) == 5_000
      assert Schedule.pace(5_000, nil, 1, @now, 125) == 5_000
    end

    test "many-page polls are spaced to stay within the per-minute budget" do
      # 50 requests (10,000 droplets) at most 125 a minute: one poll every 24 s.
      assert Schedule.pace(5_000, rl(4_000), 50, @now, 125) == 24_000
      assert Schedule.pace(5_000, rl(4_000), 5, @now, 125) == 5_000
      assert Schedule.pace(100, nil, 1, @now, 125) == 480
      assert Schedule.pace(100, nil, 1, @now, 6_000) == 100
    end

    test "below a quarter of the budget, what remains is spread until the reset" do
      # 100 left, 10 minutes to the reset, 1 request per poll: one poll every 6 s.
      assert Schedule.pace(1_000, rl(100), 1, @now, 6_000) == 6_000
      assert Schedule.pace(1_000, rl(100), 5, @now, 6_000) == 30_000
      assert Schedule.pace(60_000, rl(100), 1, @now, 6_000) == 60_000
      # Nothing left: wait for the reset.
      assert Schedule.pace(1_000, rl(0), 1, @now, 6_000) == 600_000
      # A reset in the past does not stall polling.
      assert Schedule.pace(1_000, %{rl(10) | reset: 1}, 1, @now, 6_000) == 1_000
    end
  end
end
