defmodule LibclusterDroplet.StoreFloorTest do
  @moduledoc false
  # What outlives a strategy process (LibclusterDroplet.Store, one ETS
  # table) and the rate-limit floor kept in it (LibclusterDroplet.Floor).
  # Each test uses its own topology and API URL.
  use ExUnit.Case, async: true

  alias Cluster.Strategy.Droplet.Config
  alias LibclusterDroplet.{Floor, Members, Schedule, Store, TestCluster}
  alias LibclusterDroplet.Store.Entry

  doctest LibclusterDroplet.Floor

  @now 1_700_000_000_000

  defp unique, do: System.unique_integer([:positive])
  defp url, do: "http://127.0.0.1:#{TestCluster.free_port()}/store_floor_#{unique()}"
  defp topology, do: :"store_floor_#{unique()}"

  describe "Floor.after_response/3" do
    defp rl(remaining, reset, retry_after \\ nil),
      do: %{limit: 5_000, remaining: remaining, reset: reset, retry_after: retry_after}

    test "no floor without rate-limit trouble" do
      assert Floor.after_response(nil, nil, @now) == nil
      assert Floor.after_response(rl(10, 1), nil, @now) == nil
      assert Floor.after_response(rl(10, 1), :timeout, @now) == nil
      # A 429 that says nothing of when: the backoff alone.
      assert Floor.after_response(nil, {:rate_limited, nil}, @now) == nil
    end

    test "a 429's retry-after, from the reason or the headers" do
      assert Floor.after_response(nil, {:rate_limited, 7}, @now) == @now + 7_000
      assert Floor.after_response(rl(3, 0, 9), nil, @now) == @now + 9_000
      assert Floor.after_response(rl(3, 0, 9), {:rate_limited, 7}, @now) == @now + 9_000
    end

    test "nothing remaining waits for the reset, or a minute without one" do
      reset = div(@now, 1000) + 120
      assert Floor.after_response(rl(0, reset), {:rate_limited, nil}, @now) == reset * 1000
      assert Floor.after_response(rl(0, reset), nil, @now) == reset * 1000
      assert Floor.after_response(rl(0, nil), nil, @now) == @now + 60_000
      # The later of the floors wins.
      assert Floor.after_response(rl(0, reset), {:rate_limited, 300}, @now) == @now + 300_000
    end

    test "a reset in the past still waits a moment" do
      assert Floor.after_response(rl(0, 1), nil, @now) == @now + 1_000
    end
  end

  describe "the floor of an API URL" do
    test "raise/2 never lowers it; wait/2 is the time left" do
      url = url()
      assert Floor.not_before(url) == nil
      assert Floor.wait(url, @now) == 0

      assert Floor.raise(url, @now + 30_000) == :ok
      assert Floor.not_before(url) == @now + 30_000
      assert Floor.wait(url, @now) == 30_000
      assert Floor.wait(url, @now + 29_999) == 1
      assert Floor.wait(url, @now + 30_000) == 0
      assert Floor.wait(url, @now + 90_000) == 0

      Floor.raise(url, @now + 10_000)
      assert Floor.not_before(url) == @now + 30_000
      Floor.raise(url, nil)
      assert Floor.not_before(url) == @now + 30_000
      Floor.raise(url, @now + 40_000)
      assert Floor.not_before(url) == @now + 40_000
    end

    test "one floor per API URL" do
      {a, b} = {url(), url()}
      Floor.raise(a, @now + 30_000)
      assert Floor.not_before(b) == nil
      assert Floor.wait(b, @now) == 0
    end

    test "processes raising it at once: it only ever rises, and the highest wins" do
      url = url()
      writers = 16
      # Each writer raises it step by step, so most calls do raise it.
      steps = for w <- 1..writers, do: Enum.map(1..500, &(&1 * writers + w))
      parent = self()

      reader =
        spawn_link(fn ->
          watch = fn watch, last ->
            current = Floor.not_before(url) || 0
            if current < last, do: send(parent, {:lowered, last, current})

            receive do
              :stop -> send(parent, :stopped)
            after
              0 -> watch.(watch, max(current, last))
            end
          end

          watch.(watch, 0)
        end)

      steps
      |> Enum.map(fn values -> Task.async(fn -> Enum.each(values, &Floor.raise(url, &1)) end) end)
      |> Enum.each(&Task.await/1)

      send(reader, :stop)
      assert_receive :stopped
      refute_received {:lowered, _, _}
      assert Floor.not_before(url) == 500 * writers + writers
    end

    test "a listing answered with a 429 raises it; a listing is then refused without sending anything" do
      url = url()
      now = System.system_time(:millisecond)

      assert LibclusterDroplet.listed(url, {:error, {:rate_limited, 30}}, %{}) ==
               {:error, {:rate_limited, 30}}

      assert Floor.not_before(url) in (now + 30_000)..(System.system_time(:millisecond) + 30_000)

      # Nothing listens at the URL: a request sent would fail to connect.
      assert {:error, {:rate_limited, seconds}} =
               LibclusterDroplet.list_droplets(token: "t0ken-value", api_url: url)

      # What is left of the 30 s, however slow this machine is.
      assert seconds in 1..30

      other = url()

      assert {:error, reason} =
               LibclusterDroplet.list_droplets(token: "t0ken-value", api_url: other)

      refute match?({:rate_limited, _}, reason)
    end

    test "it is never more than an hour ahead, whatever a response or a peer says" do
      far = [
        fn url ->
          LibclusterDroplet.listed(url, {:error, {:rate_limited, 1_000_000_000_000}}, %{})
        end,
        fn url ->
          limit = %{limit: 5_000, remaining: 0, reset: 1_000_000_000_000, retry_after: nil}
          LibclusterDroplet.listed(url, {:ok, %{droplets: [], total: 0}}, %{rate_limit: limit})
        end,
        fn url -> Floor.raise(url, 1_000_000_000_000_000_000) end
      ]

      for raise_far <- far do
        url = url()
        before = System.system_time(:millisecond)
        raise_far.(url)
        not_before = Floor.not_before(url)
        assert not_before >= before + Floor.longest()
        assert not_before <= System.system_time(:millisecond) + Floor.longest()
      end

      assert Floor.longest() == 3_600_000
    end

    test "the headers of a response with nothing remaining raise it to the reset" do
      url = url()
      reset = div(System.system_time(:millisecond), 1000) + 600
      info = %{rate_limit: %{limit: 5_000, remaining: 0, reset: reset, retry_after: nil}}
      assert {:ok, _} = LibclusterDroplet.listed(url, {:ok, %{droplets: [], total: 0}}, info)
      assert Floor.not_before(url) == reset * 1000
    end
  end

  describe "Store" do
    defp members(managed, removing) do
      members = Members.new!(%{topology: :store_floor}, Config.new!(token: "t0ken-value"))
      %{members | managed: MapSet.new(managed), removing: removing}
    end

    test "a topology's entry, loaded under the fingerprint it was saved with" do
      topology = topology()
      removing = %{:b@h => %{since: 1, asked: 2}}
      schedule = %Schedule{failures: 3, next_poll_at: @now + 5_000, polls: 9}

      assert Store.save(topology, 42, members([:a@h], removing), schedule) == :ok

      assert %Entry{
               fingerprint: 42,
               failures: 3,
               next_poll_at: next,
               managed: managed,
               removing: ^removing
             } = Store.load(topology, 42)

      assert next == @now + 5_000
      assert MapSet.to_list(managed) == [:a@h]
    end

    test "under another fingerprint (another configuration) it is empty" do
      topology = topology()
      Store.save(topology, 42, members([:a@h], %{}), %Schedule{failures: 2})
      assert Store.load(topology, 43) == %Entry{fingerprint: 43}
      assert Store.load(topology, 43).managed == MapSet.new()
      # Another topology knows nothing of it.
      assert Store.load(topology(), 42) == %Entry{fingerprint: 42}
    end

    test "erase/1 forgets a topology" do
      topology = topology()
      Store.save(topology, 42, members([:a@h], %{}), %Schedule{})
      assert Store.erase(topology) == :ok
      assert Store.load(topology, 42) == %Entry{fingerprint: 42}
      assert Store.erase(topology) == :ok
    end

    test "an entry outlives the process that saved it, killed or crashed" do
      topology = topology()

      {pid, ref} =
        spawn_monitor(fn ->
          Store.save(topology, 7, members([:a@h], %{}), %Schedule{failures: 1})
          exit(:kill)
        end)

      assert_receive {:DOWN, ^ref, :process, ^pid, :kill}
      assert %Entry{failures: 1} = Store.load(topology, 7)
      assert :ets.info(Store, :owner) == Process.whereis(Store)
    end

    test "the floor lives in the same table, apart from the topologies" do
      topology = topology()
      url = url()
      Floor.raise(url, @now)
      Store.erase(topology)
      assert Floor.not_before(url) == @now
      assert [{{:floor, ^url}, @now}] = :ets.lookup(Store, {:floor, url})
    end
  end
end
