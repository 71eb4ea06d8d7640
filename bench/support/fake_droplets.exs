defmodule Bench.FakeDroplets do
  @moduledoc false
  # The fake DigitalOcean API as the poll benchmarks use it: rate limits
  # lifted, and `n` plain active droplets (the full JSON shape of the API's
  # example response, about 1.6 KiB each).

  alias LibclusterDroplet.FakeAPI

  @token "dop_v1_bench_token_not_a_secret"

  def token, do: @token

  @doc "Starts a fake API (linked) and returns it."
  def start_api do
    # Lifted so thousands of requests a minute are all answered; 1 s windows
    # keep the server's rate-limit queues short.
    limits = [
      per_hour: 1_000_000_000,
      per_minute: 1_000_000_000,
      hour_ms: 1_000,
      minute_ms: 1_000
    ]

    {:ok, api} = FakeAPI.start_link(token: @token, rate_limit: limits)
    api
  end

  @doc "Serves `n` droplets from now on."
  def put(api, n) do
    FakeAPI.put_droplets(api, for(i <- 1..n, do: FakeAPI.droplet(id: i, name: "node-#{i}")))
  end

  @doc "The options of `LibclusterDroplet.list_droplets/1` for this API, plus `extra`."
  def list_opts(api, extra \\ []), do: [api_url: FakeAPI.url(api), token: @token] ++ extra
end
