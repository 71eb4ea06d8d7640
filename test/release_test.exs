defmodule LibclusterDroplet.ReleaseTest do
  @moduledoc false
  # The strategy in a `mix release`, deployed as guides/deployment.md's
  # "## Releases" says: the consumer application (see
  # LibclusterDroplet.ConsumerApp), depending on a copy of exactly the
  # package's files with its precompiled NIF (Package.precompiled!/1), is
  # compiled and released with MIX_ENV=prod on a PATH without cargo,
  # RustlerPrecompiled downloading the NIF from a loopback artifact server
  # (LIBCLUSTER_DROPLET_BASE_URL), with the guide's rel/env.sh.eex verbatim;
  # its nodes are started from `bin/consumer_app start`, each its own OS
  # process with the environment a droplet gives it. The droplet metadata
  # service the script asks for the node's address is a fake on the node's
  # own loopback address (DROPLET_METADATA_URL), so the script runs
  # unmodified and nothing ever contacts 169.254.169.254. Nodes are checked
  # with `bin/consumer_app rpc`, as an operator would, never by connecting
  # this VM to them. See LibclusterDroplet.ConsumerRelease for the
  # test-only distribution arguments (no epmd on a shared machine).
  use ExUnit.Case, async: false

  alias LibclusterDroplet.{
    ConsumerApp,
    ConsumerRelease,
    FakeAPI,
    FakeMetadata,
    Package,
    TestCluster
  }

  alias LibclusterDroplet.ConsumerRelease.Node, as: ReleaseNode
  alias LibclusterDroplet.Package.FileServer

  @root Path.expand("..", __DIR__)
  @vendor ConsumerApp.vendor_dir(@root)
  @token "dop_v1_release_test_token"
  @metadata_path "/metadata/v1/interfaces/private/0/ipv4/address"
  # The guide's default, the only place the real service's address may appear.
  @metadata_default ~S(METADATA_URL="${DROPLET_METADATA_URL:-http://169.254.169.254}")
  # Generous: a release VM boots in seconds on an idle machine; a loaded
  # one may take many times that.
  @await 120_000

  @moduletag :release
  @moduletag timeout: 900_000

  unless File.dir?(@vendor) do
    @skip_reason "#{@vendor} is absent: the vendored Hex packages are needed to build " <>
                   "the consumer application's release"
    IO.puts(:stderr, "#{inspect(__MODULE__)} skipped: #{@skip_reason}")
    @moduletag skip: @skip_reason
  end

  setup_all do
    if File.dir?(@vendor) do
      # Before anything runs the script: the real metadata service must be
      # unreachable from here, whatever the guide says.
      assert_metadata_overridable!(ConsumerRelease.env_sh!(@root))

      package = Package.precompiled!(@root)
      server = start_supervised!(FileServer)
      FileServer.put(server, "/#{package.name}", File.read!(package.artifact))

      rel =
        ConsumerRelease.build!(
          root: package.package,
          docs_root: @root,
          vendor: package.vendor,
          polling_interval: 300,
          env: [
            {"PATH", Package.path_without_cargo()},
            {"LIBCLUSTER_DROPLET_BASE_URL", FileServer.url(server)}
          ]
        )

      on_exit(fn -> ConsumerRelease.cleanup(rel) end)
      %{rel: rel, package: package, server: server}
    else
      :ok
    end
  end

  setup do
    api = start_supervised!({FakeAPI, token: @token})
    cookie = "release_test_#{System.unique_integer([:positive])}"
    %{api: api, url: FakeAPI.url(api), cookie: cookie}
  end

  test "the release carries the downloaded precompiled NIF and the guide's env.sh, and no " <>
         "build directory",
       %{rel: rel, package: package, server: server} do
    # Installed by RustlerPrecompiled: downloaded once, no cargo anywhere.
    assert FileServer.requests(server) == ["GET /#{package.name} HTTP/1.1"]
    refute rel.app.compile_output =~ "Compiling crate"
    library = String.replace_suffix(package.name, ".tar.gz", "")
    lib = Path.join(rel.root, "lib")
    assert [so] = Path.wildcard(Path.join(lib, "libcluster_droplet-*/priv/native/#{library}"))

    {:ok, tarball} =
      :erl_tar.extract(String.to_charlist(package.artifact), [:compressed, :memory])

    assert [{_, bytes}] = tarball
    assert File.read!(so) == bytes

    paths = Path.wildcard(Path.join(rel.root, "**"), match_dot: true)

    build_leftovers =
      Enum.filter(paths, fn path ->
        Path.basename(path) in ["target", "_build", "deps", "Cargo.toml", "Cargo.lock"] or
          Path.extname(path) == ".rs"
      end)

    assert build_leftovers == []

    # Of this project, only compiled code and the NIF are shipped.
    assert [dir] = Path.wildcard(Path.join(lib, "libcluster_droplet-*"))
    assert dir |> File.ls!() |> Enum.sort() == ["ebin", "priv"]
    assert File.ls!(Path.join(dir, "priv")) == ["native"]
    assert File.ls!(Path.join(dir, "priv/native")) == [library]

    # The guide's script, rendered as the release runs it, unchanged.
    assert File.read!(Path.join(rel.root, "releases/0.1.0/env.sh")) == rel.env_sh
  end

  test "three nodes started from the release binaries form a full mesh and stop", ctx do
    addresses = TestCluster.allocate_addresses(3)
    nodes = Enum.map(addresses, &start_droplet(ctx, &1))
    names = Enum.map(nodes, & &1.name)

    # Each node is connected to exactly the two others, and is named as
    # env.sh named it: the guide's basename at the address its droplet's
    # metadata service gave (`start_droplet/2` expects `app@address`).
    for node <- nodes do
      others = Enum.sort(names -- [node.name])
      assert await_view(ctx, node, &(&1.nodes == others)).self == node.name
    end

    for node <- nodes do
      # Each script asked its own droplet's metadata service, for the
      # private address only.
      requests = FakeMetadata.requests(node.metadata)
      assert requests != [] and Enum.all?(requests, &(&1 == @metadata_path))

      # The NIF is loaded from the release, not from a build directory.
      assert {out, 0} = rpc(ctx, node, ~S|IO.puts(:code.priv_dir(:libcluster_droplet))|)
      assert String.starts_with?(String.trim(out), Path.join(ctx.rel.root, "lib/"))
    end

    # The strategy formed the cluster (from the API's listing, through the
    # NIF): libcluster logged its connects.
    assert FakeAPI.request_count(ctx.api) > 0
    outputs = Enum.map_join(nodes, "\n", &ReleaseNode.output(&1.pid))
    assert outputs =~ ~r/\[libcluster:droplets\] connected to :"app@/

    for node <- nodes do
      assert {_, 0} = ConsumerRelease.command(ctx.rel, ["stop"], node.env)
      assert await_exit(node.pid) == 0
    end
  end

  test "bin/app rpc and remote reach the node only with its environment", ctx do
    [address, elsewhere] = TestCluster.allocate_addresses(2)
    node = start_droplet(ctx, address)
    assert await_view(ctx, node, fn _ -> true end).self == node.name

    # `remote` with the same environment: a shell on the node, left with
    # Ctrl+G q, which stops the shell's own VM, not the node.
    steps = [
      {:await, ~r/iex\(#{Regex.escape(node.name)}\)\d+> /},
      {:type, ~S|IO.puts("remote on #{node()}")| <> "\n"},
      {:await, ~r/^remote on #{Regex.escape(node.name)}\r?$/m},
      {:type, "\a"},
      {:await, ~r/-->/},
      {:type, "q\n"}
    ]

    assert {out, 0} = ConsumerRelease.remote(ctx.rel, node.env, steps, @await)
    assert out =~ ~r/^remote on #{Regex.escape(node.name)}\r?$/m

    # No cookie in the environment: env.sh stops the command.
    no_cookie = List.keystore(node.env, "RELEASE_COOKIE", 0, {"RELEASE_COOKIE", nil})
    assert {out, status} = ConsumerRelease.command(ctx.rel, ["rpc", "node()"], no_cookie)
    assert status != 0
    assert out =~ "set the same cookie on every droplet"
    assert {out, status} = ConsumerRelease.remote(ctx.rel, no_cookie, [], @await)
    assert is_integer(status) and status != 0
    assert out =~ "set the same cookie on every droplet"

    # Another cookie: the node refuses the connection.
    other_cookie = List.keystore(node.env, "RELEASE_COOKIE", 0, {"RELEASE_COOKIE", "other"})
    assert {out, status} = ConsumerRelease.command(ctx.rel, ["rpc", "node()"], other_cookie)
    assert status != 0
    assert out =~ "RPC failed with reason :nodedown"
    # ...and says so: it is the cookie, not the address.
    rejected = ~r/Connection attempt from node :"rpc-\w+-#{Regex.escape(node.name)}" rejected/
    await(fn -> ReleaseNode.output(node.pid) =~ rejected end)

    # Another metadata answer (another droplet): another RELEASE_NODE, which
    # no node answers to.
    md = start_supervised!({FakeMetadata, ip: elsewhere, answers: answers(elsewhere)}, id: :other)

    other_node =
      List.keystore(node.env, ConsumerRelease.metadata_env(), 0, {
        ConsumerRelease.metadata_env(),
        FakeMetadata.url(md)
      })

    assert {out, status} = ConsumerRelease.command(ctx.rel, ["rpc", "node()"], other_node)
    assert status != 0
    assert out =~ "RPC failed with reason :nodedown"

    # None of those reached the node, which still answers its own environment.
    assert {_, 0} = ConsumerRelease.command(ctx.rel, ["stop"], node.env)
    assert await_exit(node.pid) == 0
  end

  test "with the metadata service unreachable, no node starts and rpc stops", ctx do
    [address] = TestCluster.allocate_addresses(1)
    {:ok, ip} = :inet.parse_address(String.to_charlist(address))
    # A port nothing listens on: curl's connection is refused.
    {:ok, closed} = :gen_tcp.listen(0, ip: ip)
    {:ok, port} = :inet.port(closed)
    :ok = :gen_tcp.close(closed)

    env = node_env(ctx, address, "http://#{address}:#{port}")
    pid = ConsumerRelease.start_node(ctx.rel, env)
    on_exit(fn -> stop_node(pid) end)

    assert await_exit(pid) != 0
    # curl's own error, and the script stopped there: no VM was started
    # with a node name missing its address.
    assert ReleaseNode.output(pid) =~ "curl: (7)"
    refute ReleaseNode.output(pid) =~ "app@"

    # Every command sources env.sh: rpc stops there too.
    assert {out, status} = ConsumerRelease.command(ctx.rel, ["rpc", "node()"], env)
    assert status != 0
    assert out =~ "curl: (7)"
    refute out =~ "app@"
  end

  # ------------------------------------------------------------------ helpers

  # A droplet at `address`: listed in the fake API, with its own metadata
  # service, and its release node started. Stopped when the test ends.
  defp start_droplet(ctx, address) do
    id = System.unique_integer([:positive])
    :ok = FakeAPI.add_droplet(ctx.api, ConsumerApp.droplet(ctx.rel.app, id, address))
    md = start_supervised!({FakeMetadata, ip: address, answers: answers(address)}, id: id)
    env = node_env(ctx, address, FakeMetadata.url(md))
    pid = ConsumerRelease.start_node(ctx.rel, env)
    on_exit(fn -> stop_node(pid) end)
    name = "#{ConsumerApp.basename(ctx.rel.app)}@#{address}"
    %{name: name, pid: pid, env: env, metadata: md}
  end

  defp answers(address), do: %{@metadata_path => address}

  defp node_env(ctx, address, metadata_url) do
    ConsumerRelease.node_env(address,
      token: @token,
      api_url: ctx.url,
      cookie: ctx.cookie,
      metadata_url: metadata_url
    )
  end

  # Runs on test exit even when the test failed: the node's process must
  # be gone before the release's directory is removed.
  defp stop_node(pid) do
    if Process.alive?(pid), do: ReleaseNode.stop(pid)
  catch
    :exit, _ -> :ok
  end

  defp rpc(ctx, node, expr), do: ConsumerRelease.command(ctx.rel, ["rpc", expr], node.env)

  # The node's own name and the nodes it is connected to (sorted, visible
  # ones: the rpc VM itself is hidden), asked with `bin/consumer_app rpc`,
  # once `accept?` returns true for them.
  defp await_view(ctx, node, accept?) do
    expr = ~S{IO.puts("view " <> Enum.join([node() | Enum.sort(Node.list())], " "))}

    try do
      await(fn ->
        {out, status} = rpc(ctx, node, expr)
        Process.put({__MODULE__, :last_rpc}, {status, out})

        with 0 <- status,
             [_, line] <- Regex.run(~r/^view (.*)$/m, out),
             [self | nodes] = String.split(line, " ", trim: true),
             view = %{self: self, nodes: nodes},
             true <- accept?.(view) do
          view
        else
          _ -> false
        end
      end)
    rescue
      error in ExUnit.AssertionError ->
        flunk(
          "#{node.name}: #{error.message}\nlast rpc: " <>
            inspect(Process.get({__MODULE__, :last_rpc})) <>
            "\nnode output:\n" <> ReleaseNode.output(node.pid)
        )
    end
  end

  defp await(fun), do: TestCluster.await(fun, @await, 250)

  # The exit status of a release node's process, once it has exited.
  defp await_exit(pid) do
    await(fn ->
      case ReleaseNode.status(pid) do
        {:exited, status} -> {:ok, status}
        :running -> false
      end
    end)
    |> elem(1)
  end

  defp assert_metadata_overridable!(env_sh) do
    assert env_sh =~ @metadata_default,
           "the guide's env.sh.eex must read the metadata base URL from " <>
             "DROPLET_METADATA_URL, defaulting to the real service:\n#{env_sh}"

    refute env_sh |> String.replace(@metadata_default, "") |> String.contains?("169.254.169.254"),
           "the guide's env.sh.eex names the metadata service's address outside " <>
             "the DROPLET_METADATA_URL default; running it here could contact it:\n#{env_sh}"

    assert env_sh =~ ~S("${METADATA_URL}/metadata/v1/),
           "the guide's env.sh.eex must ask ${METADATA_URL} for its address:\n#{env_sh}"
  end
end
