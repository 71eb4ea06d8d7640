defmodule LibclusterDroplet.PoolTest do
  @moduledoc false
  # The autoscale pool the strategy keeps between polls: only a pool the
  # API named fully is kept and sent back in place of the configured option.
  use ExUnit.Case, async: true

  alias LibclusterDroplet.Pool

  @pool %{id: "0d9d0f8c-5f8b-4f30-9c5c-4b5e1d2f6a7b", name: "web", tags: ["web"]}

  test "a pool the listing names is kept, with when it was first resolved" do
    kept = Pool.listed(nil, @pool, 100)
    assert kept == Map.put(@pool, :at, 100)
    assert Pool.cached(kept, 150) == kept
    # Renamed: the same pool, resolved at the same time.
    assert Pool.listed(kept, %{@pool | name: "web-2"}, 200) == %{kept | name: "web-2"}
    assert Pool.listed(kept, nil, 200) == nil
  end

  test "an id or name echoed empty, not a string or redacted is not kept: the option is sent again" do
    for {id, name} <- [
          {@pool.id, ""},
          {"", "web"},
          {@pool.id, "[REDACTED]"},
          {"[REDACTED]", "web"},
          {@pool.id, "web-[REDACTED]"},
          {nil, "web"},
          {@pool.id, nil},
          {@pool.id, ~c"web"}
        ] do
      echoed = %{@pool | id: id, name: name}
      assert Pool.listed(nil, echoed, 100) == nil, inspect(echoed)
      assert Pool.listed(Map.put(@pool, :at, 50), echoed, 100) == nil, inspect(echoed)
    end

    # So the next request asks for the pool as configured.
    for option <- ["web", @pool.id] do
      kept = Pool.listed(nil, %{@pool | name: ""}, 0)
      opts = [token: "a-token", autoscale_pool: option]
      assert {:ok, request} = LibclusterDroplet.list_request(opts, Pool.cached(kept, 0))

      assert request.autoscale_pool in [
               %{id: nil, name: option, tags: nil},
               %{id: option, name: nil, tags: nil}
             ]
    end
  end
end
