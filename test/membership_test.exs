defmodule LibclusterDroplet.MembershipTest do
  # Not async: one test takes :telemetry out of the VM for a moment.
  use ExUnit.Case, async: false

  import ExUnit.CaptureLog
  alias LibclusterDroplet.{FakeAPI, Membership, SpyMembership}

  # MFAs in libcluster's shape: the node is appended to the arguments.
  def connect(pid, answers, node) do
    send(pid, {:connect, node})
    Map.get(answers, node, true)
  end

  def disconnect(pid, answers, node) do
    send(pid, {:disconnect, node})
    Map.get(answers, node, true)
  end

  def list_nodes(nodes), do: nodes

  defp mfas(answers \\ %{}, connected \\ []) do
    {{__MODULE__, :connect, [self(), answers]}, {__MODULE__, :disconnect, [self(), answers]},
     {__MODULE__, :list_nodes, [connected]}}
  end

  # libcluster is an optional dependency, loaded in this repository's own
  # builds: the fallback, used by applications without it, is called directly.
  test "libcluster is loaded here, so connect_nodes/4 and disconnect_nodes/4 use it" do
    assert Membership.libcluster?()
  end

  describe "connect_nodes/4 without libcluster" do
    test "skips this node and the nodes already connected, connects the rest in order" do
      {connect, _, list} = mfas(%{}, [:"b@10.0.0.2"])

      log =
        capture_log(fn ->
          assert :ok =
                   Membership.fallback_connect(:web, connect, list, [
                     :"a@10.0.0.1",
                     :"b@10.0.0.2",
                     Node.self(),
                     :"c@10.0.0.3"
                   ])
        end)

      assert_received {:connect, :"a@10.0.0.1"}
      assert_received {:connect, :"c@10.0.0.3"}
      refute_received {:connect, _}
      assert log =~ ~s([libcluster:web] connected to :"a@10.0.0.1")
      assert log =~ ~s([libcluster:web] connected to :"c@10.0.0.3")
    end

    test "false and :ignored are logged as warnings and returned" do
      {connect, _, list} = mfas(%{:"a@10.0.0.1" => false, :"b@10.0.0.2" => :ignored})

      log =
        capture_log(fn ->
          assert {:error, [{:"a@10.0.0.1", false}, {:"b@10.0.0.2", :ignored}]} =
                   Membership.fallback_connect(:web, connect, list, [:"a@10.0.0.1", :"b@10.0.0.2"])
        end)

      assert log =~ ~s([libcluster:web] unable to connect to :"a@10.0.0.1")
      assert log =~ ~s([libcluster:web] unable to connect to :"b@10.0.0.2": not part of network)
    end

    test "an MFA that is not exported raises, as libcluster does" do
      {_, _, list} = mfas()

      assert_raise ArgumentError, ~r/nope\/1 is undefined/, fn ->
        Membership.fallback_connect(:web, {__MODULE__, :nope, []}, list, [:"a@10.0.0.1"])
      end
    end
  end

  describe "disconnect_nodes/4 without libcluster" do
    test "acts only on connected nodes, never on this one" do
      {_, disconnect, list} = mfas(%{}, [:"a@10.0.0.1", Node.self()])

      log =
        capture_log(fn ->
          assert :ok =
                   Membership.fallback_disconnect(:web, disconnect, list, [
                     :"a@10.0.0.1",
                     :"z@10.0.0.9",
                     Node.self()
                   ])
        end)

      assert_received {:disconnect, :"a@10.0.0.1"}
      refute_received {:disconnect, _}
      assert log =~ ~s([libcluster:web] disconnected from :"a@10.0.0.1")
    end

    test "false and :ignored only log; other results are failures" do
      connected = [:"a@10.0.0.1", :"b@10.0.0.2", :"c@10.0.0.3"]

      answers = %{
        :"a@10.0.0.1" => false,
        :"b@10.0.0.2" => :ignored,
        :"c@10.0.0.3" => {:error, :busy}
      }

      {_, disconnect, list} = mfas(answers, connected)

      log =
        capture_log(fn ->
          assert {:error, [{:"c@10.0.0.3", {:error, :busy}}]} =
                   Membership.fallback_disconnect(:web, disconnect, list, connected)
        end)

      assert log =~ "already disconnected"
      assert log =~ "not part of the network"
      assert log =~ ~s(disconnect from :"c@10.0.0.3" failed with: {:error, :busy})
    end
  end

  @events [
    [:libcluster, :connect_node, :ok],
    [:libcluster, :connect_node, :error],
    [:libcluster, :disconnect_node, :ok],
    [:libcluster, :disconnect_node, :error],
    [:libcluster_droplet, :poll, :start],
    [:libcluster_droplet, :poll, :stop],
    [:libcluster_droplet, :poll, :error]
  ]

  # Forwards every event of @events to the test process until the test ends.
  defp attach_telemetry do
    id = {__MODULE__, make_ref()}
    pid = self()

    :ok = :telemetry.attach_many(id, @events, &__MODULE__.forward_event/4, pid)

    on_exit(fn -> :telemetry.detach(id) end)
  end

  @doc false
  def forward_event(event, measurements, metadata, pid),
    do: send(pid, {:telemetry, event, measurements, metadata})

  # A spy connect that refuses the nodes of `refused`.
  def refusing_connect(spy, refused, node) do
    if node in refused, do: false, else: SpyMembership.connect(spy, node)
  end

  # The poll stop events' stage counts, oldest first, until one matches `fun`.
  defp await_counts(fun, seen \\ []) do
    receive do
      {:telemetry, [:libcluster_droplet, :poll, :stop], measurements, _metadata} ->
        counts = Map.take(measurements, [:listed, :selected, :healthy, :connected])

        if fun.(counts),
          do: Enum.reverse([counts | seen]),
          else: await_counts(fun, [counts | seen])
    after
      10_000 -> flunk("no matching poll stop event; saw #{inspect(Enum.reverse(seen))}")
    end
  end

  describe "telemetry" do
    test "without :telemetry in the VM, nothing is emitted and nothing raises" do
      ebin = :code.lib_dir(:telemetry, :ebin)
      true = :code.del_path(ebin)
      :code.purge(:telemetry)
      true = :code.delete(:telemetry)

      try do
        refute Code.ensure_loaded?(:telemetry)
        {connect, _, list} = mfas()

        capture_log(fn ->
          assert :ok = Membership.fallback_connect(:web, connect, list, [:"a@10.0.0.1"])
        end)

        assert_received {:connect, :"a@10.0.0.1"}
      after
        true = :code.add_patha(ebin)
        {:module, :telemetry} = Code.ensure_loaded(:telemetry)
      end
    end

    test "the fallback's events are libcluster's" do
      attach_telemetry()
      {connect, disconnect, list} = mfas(%{:"b@10.0.0.2" => false}, [:"c@10.0.0.3"])

      capture_log(fn ->
        Membership.fallback_connect(:web, connect, list, [:"a@10.0.0.1", :"b@10.0.0.2"])
        Membership.fallback_disconnect(:web, disconnect, list, [:"c@10.0.0.3"])
      end)

      assert_received {:telemetry, [:libcluster, :connect_node, :ok], %{duration: d},
                       %{node: :"a@10.0.0.1", topology: :web}}
                      when is_integer(d)

      assert_received {:telemetry, [:libcluster, :connect_node, :error], _,
                       %{node: :"b@10.0.0.2", topology: :web, reason: :unreachable}}

      assert_received {:telemetry, [:libcluster, :disconnect_node, :ok], _,
                       %{node: :"c@10.0.0.3"}}
    end

    test "the strategy's poll events" do
      attach_telemetry()

      token = "telemetry-token"
      droplet = FakeAPI.droplet(id: 1, name: "t-1", private_ip: "127.0.6.2")
      {:ok, api} = FakeAPI.start_link(token: token, droplets: [droplet])
      spy = SpyMembership.start()
      config = [token: token, api_url: FakeAPI.url(api), polling_interval: 100]

      child =
        {Cluster.Strategy.Droplet,
         [topology: :telemetry_t, config: config] ++ SpyMembership.mfas(spy)}

      capture_log(fn ->
        start_supervised!(child)

        assert_receive {:telemetry, [:libcluster_droplet, :poll, :start], %{system_time: _},
                        %{topology: :telemetry_t}},
                       5_000

        assert_receive {:telemetry, [:libcluster_droplet, :poll, :stop],
                        %{duration: _, requests: 1},
                        %{topology: :telemetry_t, droplets: 1, nodes: 1}},
                       5_000

        FakeAPI.inject(api, {:status, 503})

        assert_receive {:telemetry, [:libcluster_droplet, :poll, :error], %{duration: _},
                        %{topology: :telemetry_t, reason: :http_status, failures: 1}},
                       5_000
      end)
    end

    test "a poll's stop event counts the droplets at each stage: listed, selected, healthy, connected" do
      attach_telemetry()
      token = "telemetry-token"
      port = LibclusterDroplet.TestCluster.free_port()
      # Two nodes answer the health check; one does not; one droplet is in another region.
      for a <- ["127.0.6.12", "127.0.6.13"], do: LibclusterDroplet.TestCluster.open_port(a, port)

      droplets = [
        FakeAPI.droplet(id: 1, name: "s-1", private_ip: "127.0.6.12"),
        FakeAPI.droplet(id: 2, name: "s-2", private_ip: "127.0.6.13"),
        FakeAPI.droplet(id: 3, name: "s-3", private_ip: "127.0.6.14"),
        FakeAPI.droplet(id: 4, name: "s-4", private_ip: "127.0.6.15", region: "ams3")
      ]

      {:ok, api} = FakeAPI.start_link(token: token, droplets: droplets)
      spy = SpyMembership.start()
      # Healthy, listed, and never connected: what users alert on.
      refused = [:"s-2@127.0.6.13"]

      config = [
        token: token,
        api_url: FakeAPI.url(api),
        polling_interval: 100,
        max_requests_per_minute: 60_000,
        regions: ["nyc3"],
        health_check: {:tcp, port: port, timeout: 2_000}
      ]

      mfas = [
        connect: {__MODULE__, :refusing_connect, [spy, refused]},
        disconnect: {SpyMembership, :disconnect, [spy]},
        list_nodes: {SpyMembership, :list_nodes, [spy]}
      ]

      capture_log(fn ->
        start_supervised!(
          {Cluster.Strategy.Droplet, [topology: :counts_t, config: config] ++ mfas}
        )

        # The first poll's connects finish after it ends; a later one sees s-1 connected.
        counts = await_counts(&(&1.connected == 1))
        assert List.last(counts) == %{listed: 4, selected: 3, healthy: 2, connected: 1}
        assert Enum.all?(counts, &(&1.listed == 4 and &1.selected == 3 and &1.healthy == 2))
        # s-2 stays healthy and unconnected, poll after poll.
        assert await_counts(fn _ -> true end) == [
                 %{listed: 4, selected: 3, healthy: 2, connected: 1}
               ]
      end)
    end
  end
end
