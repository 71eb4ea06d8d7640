defmodule LibclusterDroplet.FakeAPI.RateLimit do
  @moduledoc false
  # DigitalOcean's two limits for one token, as pure data owned by the
  # FakeAPI server: a sliding "hour" (each counted request counts until
  # `hour_ms` after it was made) and a sliding burst "minute". Both windows
  # are plain queues of monotonic timestamps; they are short (at most
  # `per_hour` and `per_minute` entries) because a refused request is never
  # added.

  @enforce_keys [:per_hour, :per_minute, :hour_ms, :minute_ms]
  defstruct [
    :per_hour,
    :per_minute,
    :hour_ms,
    :minute_ms,
    hour: :queue.new(),
    hour_n: 0,
    minute: :queue.new(),
    minute_n: 0
  ]

  @type t :: %__MODULE__{}

  @defaults [per_hour: 5000, per_minute: 250, hour_ms: 3_600_000, minute_ms: 60_000]

  @spec new(keyword) :: t
  def new(opts) do
    opts = Keyword.validate!(opts, @defaults)

    for key <- [:per_hour, :per_minute] do
      unless is_integer(opts[key]) and opts[key] >= 0,
        do: raise(ArgumentError, "rate_limit #{key} must be a non-negative integer")
    end

    for key <- [:hour_ms, :minute_ms] do
      unless is_integer(opts[key]) and opts[key] > 0,
        do: raise(ArgumentError, "rate_limit #{key} must be a positive integer")
    end

    struct!(__MODULE__, opts)
  end

  @doc "New limits, keeping the ones not given, with empty windows."
  @spec update(t, keyword) :: t
  def update(%__MODULE__{} = rl, opts) do
    current = Map.take(rl, Keyword.keys(@defaults)) |> Enum.to_list()
    new(Keyword.merge(current, opts))
  end

  @doc "Forgets requests that left their window by `now` (monotonic ms)."
  @spec prune(t, integer) :: t
  def prune(rl, now) do
    {hour, hour_n} = drop_expired(rl.hour, rl.hour_n, now - rl.hour_ms)
    {minute, minute_n} = drop_expired(rl.minute, rl.minute_n, now - rl.minute_ms)
    %{rl | hour: hour, hour_n: hour_n, minute: minute, minute_n: minute_n}
  end

  defp drop_expired(q, n, cutoff) do
    case :queue.peek(q) do
      {:value, t} when t <= cutoff -> drop_expired(:queue.drop(q), n - 1, cutoff)
      _ -> {q, n}
    end
  end

  @doc """
  Whether one more request fits, on a pruned `rl`: `:ok`, `:hourly` (the
  hour budget is spent) or `{:burst, retry_after_seconds}`. The hour is
  checked first: when it is spent, a burst `retry-after` would be a lie.
  """
  @spec check(t, integer) :: :ok | :hourly | {:burst, pos_integer}
  def check(rl, now) do
    cond do
      rl.hour_n >= rl.per_hour -> :hourly
      rl.minute_n >= rl.per_minute -> {:burst, retry_after(rl, now)}
      true -> :ok
    end
  end

  defp retry_after(rl, now) do
    frees_in =
      case :queue.peek(rl.minute) do
        {:value, oldest} -> oldest + rl.minute_ms - now
        # per_minute is 0: nothing will ever fit, so say one window.
        :empty -> rl.minute_ms
      end

    max(ceil_div(frees_in, 1000), 1)
  end

  @spec count(t, integer) :: t
  def count(rl, now) do
    %{
      rl
      | hour: :queue.in(now, rl.hour),
        hour_n: rl.hour_n + 1,
        minute: :queue.in(now, rl.minute),
        minute_n: rl.minute_n + 1
    }
  end

  @doc """
  The `ratelimit-*` headers. `ratelimit-reset` is rounded up, so a client
  waiting until then finds the oldest request gone.
  """
  @spec headers(t, integer, integer) :: [{String.t(), String.t()}]
  def headers(rl, now, unix_ms) do
    reset =
      case :queue.peek(rl.hour) do
        {:value, oldest} -> ceil_div(unix_ms + oldest + rl.hour_ms - now, 1000)
        :empty -> div(unix_ms, 1000)
      end

    [
      {"ratelimit-limit", Integer.to_string(rl.per_hour)},
      {"ratelimit-remaining", Integer.to_string(max(rl.per_hour - rl.hour_n, 0))},
      {"ratelimit-reset", Integer.to_string(reset)}
    ]
  end

  defp ceil_div(a, b) when a > 0, do: div(a + b - 1, b)
  defp ceil_div(_a, _b), do: 0
end
