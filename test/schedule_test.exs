defmodule LibclusterDroplet.ScheduleTest do
  use ExUnit.Case, async: true

  alias LibclusterDroplet.Schedule

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

  describe "pace/3" do
    test "the interval stands while a quarter of the budget remains" do
      assert Schedule.pace(
               5_000,
               %{limit: 5_000, remaining: 1_250, reset: 0, retry_after: nil},
               1
             ) == 5_000

      assert Schedule.pace(5_000, nil, 1) == 5_000
    end

    test "below that, what remains is spread over the next hour" do
      # 1,000 left, 1 request per poll: one poll every 3.6 s would spend it in an hour.
      assert Schedule.pace(
               1_000,
               %{limit: 5_000, remaining: 1_000, reset: 0, retry_after: nil},
               1
             ) == 3_600

      assert Schedule.pace(1_000, %{limit: 5_000, remaining: 100, reset: 0, retry_after: nil}, 5) ==
               180_000

      assert Schedule.pace(
               100_000,
               %{limit: 5_000, remaining: 100, reset: 0, retry_after: nil},
               1
             ) == 100_000
    end
  end
end
