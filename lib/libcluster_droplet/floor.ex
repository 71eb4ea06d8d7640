defmodule LibclusterDroplet.Floor do
  @moduledoc false
  # The rate-limit floor: after a 429 nothing goes to the API before its
  # `retry-after`, nor before `ratelimit-reset` once no request remains.
  # One floor per API URL and VM, kept in LibclusterDroplet.Store; every
  # path to the API (start_list_droplets/1, the strategy's start_api_poll/1)
  # asks wait/2 first, and leaders share their floor with their followers.

  alias LibclusterDroplet.Store

  # How long to wait before the next request to `api_url`, in ms from `now`.
  @spec wait(String.t(), integer()) :: non_neg_integer()
  def wait(api_url, now \\ System.system_time(:millisecond)) do
    case not_before(api_url) do
      nil -> 0
      not_before -> max(not_before - now, 0)
    end
  end

  # The floor of `api_url`, in Unix ms, or nil.
  @spec not_before(String.t()) :: integer() | nil
  def not_before(api_url) do
    case :ets.lookup(Store.table(), {:floor, api_url}) do
      [{_, not_before}] -> not_before
      [] -> nil
    end
  end

  # DigitalOcean's budget is an hour's: a floor further ahead, from a
  # hostile retry-after or reset or from a peer's clock, would silence the
  # whole cluster for as long (and past 49 days no timer can be armed).
  @longest 3_600_000

  @doc "The longest a floor holds, in ms from when it is raised."
  @spec longest() :: pos_integer()
  def longest, do: @longest

  @spec raise(String.t(), integer() | nil) :: :ok
  def raise(_api_url, nil), do: :ok

  def raise(api_url, not_before) when is_integer(not_before),
    do: raise_to({:floor, api_url}, min(not_before, System.system_time(:millisecond) + @longest))

  # Never lowers the floor; a compare-and-set, as another process may raise
  # it at the same time.
  defp raise_to(key, not_before) do
    table = Store.table()

    case :ets.lookup(table, key) do
      [] ->
        unless :ets.insert_new(table, {key, not_before}), do: raise_to(key, not_before)

      [{_, current} = old] when current < not_before ->
        if :ets.select_replace(table, [{old, [], [{:const, {key, not_before}}]}]) == 0,
          do: raise_to(key, not_before)

      _higher ->
        :ok
    end

    :ok
  end

  @doc """
  The floor (Unix ms) a response sets, or `nil`: a 429's `retry-after`, or
  `reset` (a minute when missing) once `remaining` is 0.

      iex> LibclusterDroplet.Floor.after_response(nil, {:rate_limited, 30}, 1_000)
      31000
      iex> LibclusterDroplet.Floor.after_response(%{remaining: 0, reset: 90, limit: 5000, retry_after: nil}, nil, 1_000)
      90000
      iex> LibclusterDroplet.Floor.after_response(%{remaining: 10, reset: 90, limit: 5000, retry_after: nil}, :timeout, 1_000)
      nil
  """
  @spec after_response(LibclusterDroplet.rate_limit() | nil, term(), integer()) ::
          integer() | nil
  def after_response(rate_limit, reason, now) do
    retry =
      case reason do
        {:rate_limited, seconds} when is_integer(seconds) -> now + seconds * 1000
        _ -> nil
      end

    retry_header =
      case rate_limit do
        %{retry_after: seconds} when is_integer(seconds) -> now + seconds * 1000
        _ -> nil
      end

    exhausted =
      case rate_limit do
        %{remaining: 0, reset: reset} when is_integer(reset) -> max(reset * 1000, now + 1000)
        %{remaining: 0} -> now + 60_000
        _ -> nil
      end

    [retry, retry_header, exhausted] |> Enum.reject(&is_nil/1) |> Enum.max(fn -> nil end)
  end
end
