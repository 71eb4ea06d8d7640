defmodule LibclusterDroplet.FloorPathsTest do
  @moduledoc false
  # The paths to the API besides the strategy's: LibclusterDroplet.list_droplets/1
  # and `mix libcluster_droplet.explain`, which lists through it. While the
  # floor of an API URL holds, they refuse with {:error, {:rate_limited, s}}
  # and send nothing, as the fake API's request log shows.
  # Not async: the mix task reads the :libcluster application env.
  use ExUnit.Case, async: false

  import ExUnit.CaptureIO
  alias LibclusterDroplet.{FakeAPI, Floor, TestCluster}

  @token "dop_v1_floor_paths_token_a1b2c3"
  @var "LIBCLUSTER_DROPLET_FLOOR_PATHS_TOKEN"
  @open [per_minute: 1_000_000, minute_ms: 60_000]

  defp droplets,
    do:
      for(i <- 1..2, do: FakeAPI.droplet(id: i, name: "fp-#{i}", private_ip: "127.0.8.#{i + 1}"))

  defp list(api), do: LibclusterDroplet.list_droplets(token: @token, api_url: FakeAPI.url(api))

  test "after a 429, list_droplets/1 refuses with the seconds left and sends nothing; other API URLs list" do
    # Every request is answered 429 with retry-after: 30.
    {:ok, api} =
      FakeAPI.start_link(
        token: @token,
        droplets: droplets(),
        rate_limit: [per_minute: 0, minute_ms: 30_000]
      )

    {:ok, other} = FakeAPI.start_link(token: @token, droplets: droplets())

    assert list(api) == {:error, {:rate_limited, 30}}
    assert FakeAPI.request_count(api) == 1

    # The API would answer now: only the floor holds the listings back.
    :ok = FakeAPI.set_rate_limit(api, @open)

    for _ <- 1..3 do
      assert {:error, {:rate_limited, seconds}} = list(api)
      assert seconds in 1..30
    end

    assert FakeAPI.request_count(api) == 1
    # A floor per API URL.
    assert {:ok, %{droplets: [_, _]}} = list(other)
  end

  test "ratelimit-remaining: 0 holds list_droplets/1 until the reset, and no 429 is drawn" do
    # One request per 3 s window: the first answer says nothing remains.
    {:ok, api} =
      FakeAPI.start_link(
        token: @token,
        droplets: droplets(),
        rate_limit: [per_hour: 1, hour_ms: 3_000]
      )

    assert {:ok, _} = list(api)
    assert [%{headers: %{"ratelimit-remaining" => "0"} = headers}] = FakeAPI.requests(api)
    reset_ms = String.to_integer(headers["ratelimit-reset"]) * 1000
    assert Floor.not_before(FakeAPI.url(api)) == reset_ms

    assert {:error, {:rate_limited, seconds}} = list(api)
    # The reset is a whole second, rounded up.
    assert seconds in 1..4
    assert FakeAPI.request_count(api) == 1

    # Once the reset has passed it lists again, with no 429 on the way.
    TestCluster.await(fn -> Floor.wait(FakeAPI.url(api)) == 0 end, 10_000)
    assert {:ok, _} = list(api)
    assert [first, second] = FakeAPI.requests(api)
    assert Enum.map([first, second], & &1.status) == [200, 200]
    assert second.unix_ms >= reset_ms - 50
  end

  describe "mix libcluster_droplet.explain" do
    setup do
      previous = Application.get_env(:libcluster, :topologies)
      System.put_env(@var, @token)

      on_exit(fn ->
        System.delete_env(@var)

        if previous,
          do: Application.put_env(:libcluster, :topologies, previous),
          else: Application.delete_env(:libcluster, :topologies)
      end)
    end

    test "refuses while the floor of its API URL holds, sending nothing" do
      {:ok, api} =
        FakeAPI.start_link(
          token: @token,
          droplets: droplets(),
          rate_limit: [per_minute: 0, minute_ms: 30_000]
        )

      Application.put_env(:libcluster, :topologies,
        droplets: [
          strategy: Cluster.Strategy.Droplet,
          config: [token: {:system, @var}, api_url: FakeAPI.url(api)]
        ]
      )

      # A listing of another caller drew a 429.
      assert {:error, {:rate_limited, 30}} = list(api)
      :ok = FakeAPI.set_rate_limit(api, @open)
      FakeAPI.reset_requests(api)

      error =
        assert_raise Mix.Error, fn ->
          capture_io(fn -> Mix.Task.rerun("libcluster_droplet.explain", []) end)
        end

      assert error.message =~ "failed (rate_limited)"
      assert error.message =~ "retry allowed in"
      assert FakeAPI.request_count(api) == 0
    end
  end
end
