defmodule Cluster.Strategy.Droplet.ConfigTest do
  @moduledoc false
  # The one schema of the strategy's options (and the part
  # list_droplets/1 shares): defaults, each error naming the option and
  # the shape it accepts and never the value, tokens refused wherever
  # they are pasted, the caps, and the fingerprint.
  use ExUnit.Case, async: true

  import LibclusterDroplet.TokenPieces

  alias Cluster.Strategy.Droplet.Config

  @prefix "Cluster.Strategy.Droplet: "
  # Shaped like a DigitalOcean token: dop_v1_ and 64 hex digits.
  @do_token "dop_v1_" <> Base.encode16(:crypto.hash(:sha256, "config_test"), case: :lower)
  # A secret of no known shape, which every text option but :regions and
  # :vpc would accept as a value (letters, digits and '-').
  @plain_token "Zq7-secret-T0ken-NotDOshaped-4f9a2c1b8e7d6a5f3c2b1a09"
  # A source the config cannot read: the options are checked on their own.
  @unread {:system, "LIBCLUSTER_DROPLET_CONFIG_TEST_UNSET"}
  @vpc "760e09ef-dc84-11e8-981e-3cfdfeaae000"

  defp error(opts) do
    assert {:error, message} = Config.new(opts)
    error = assert_raise ArgumentError, fn -> Config.new!(opts) end
    assert error.message == @prefix <> message
    message
  end

  # The error for `opts`, checked for every window of `token`.
  defp error(opts, token) do
    message = error(opts)
    assert_no_piece(message, token)
    assert_no_piece(inspect(%ArgumentError{message: message}), token)
    message
  end

  defp tmp_file!(name) do
    dir = Path.join(System.tmp_dir!(), "config_test_#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    on_exit(fn -> File.rm_rf!(dir) end)
    path = Path.join(dir, name)
    File.write!(path, "")
    path
  end

  describe "defaults" do
    test "only :token is required; the rest take the original strategy's defaults" do
      config = Config.new!(token: @plain_token)

      assert %Config{
               network: :private,
               ipv6: false,
               tag_name: nil,
               name: nil,
               gpus: false,
               vpc: nil,
               regions: nil,
               node_basename: nil,
               health_check: nil,
               polling_interval: 5_000,
               api_url: "https://api.digitalocean.com",
               ca_file: nil,
               api_timeout: 10_000,
               max_backoff: 60_000,
               max_requests_per_minute: 125,
               coordinate: true,
               require_listed: true
             } = config

      assert {:ok, @plain_token, _} = LibclusterDroplet.Token.fetch(config.token)

      assert Config.keys() |> Enum.sort() ==
               config |> Map.from_struct() |> Map.keys() |> Enum.sort()
    end

    test "health_check timeout defaults to 500 ms" do
      assert %Config{health_check: {:tcp, port: 4000, timeout: 500}} =
               Config.new!(token: @plain_token, health_check: {:tcp, port: 4000})

      assert %Config{health_check: {:tcp, port: 1, timeout: 20}} =
               Config.new!(token: @plain_token, health_check: {:tcp, timeout: 20, port: 1})
    end

    test "any positive polling_interval is accepted" do
      assert %Config{polling_interval: 1} = Config.new!(token: @plain_token, polling_interval: 1)
    end

    test "a trailing slash of api_url is dropped, http is fine on loopback" do
      for {given, kept} <- [
            {"http://127.0.0.1:4000/", "http://127.0.0.1:4000"},
            {"http://[::1]:4000", "http://[::1]:4000"},
            {"http://localhost:9", "http://localhost:9"},
            {"https://api.example.com/v2/", "https://api.example.com/v2"}
          ] do
        assert %Config{api_url: ^kept} = Config.new!(token: @plain_token, api_url: given)
      end
    end

    test "the token may be a zero-arity function, {:system, var}, {:file, path} or an MFA" do
      for source <- [
            fn -> @plain_token end,
            {:system, "DIGITALOCEAN_TOKEN"},
            {:file, "/run/secrets/do_token"},
            {System, :get_env, ["DIGITALOCEAN_TOKEN"]}
          ] do
        assert %LibclusterDroplet.Token{} = Config.new!(token: source).token
      end
    end

    test "inspect and ~p never show the token" do
      config = Config.new!(token: @plain_token)

      for text <- [
            inspect(config),
            inspect(config, structs: false, limit: :infinity),
            :io_lib.format(~c"~p", [config]) |> IO.iodata_to_binary()
          ] do
        assert_no_piece(text, @plain_token)
      end
    end

    test "several tags, GPU droplets, a VPC and regions are accepted; repeats dropped" do
      config =
        Config.new!(
          token: @plain_token,
          tag_name: ["web", "db", "web"],
          gpus: :only,
          vpc: String.upcase(@vpc),
          regions: ["nyc3", "sfo3", "nyc3"]
        )

      # The UUID in the API's lower case.
      assert %Config{tag_name: ["web", "db"], gpus: :only, vpc: @vpc, regions: ["nyc3", "sfo3"]} =
               config

      assert %Config{gpus: true, vpc: :self, tag_name: "web"} =
               Config.new!(token: @plain_token, gpus: true, vpc: :self, tag_name: "web")
    end
  end

  describe "each bad option names itself and the shape it accepts, never the value" do
    test "token" do
      assert error([]) =~ "required :token option not found"

      assert error(token: "") ==
               "invalid value for :token option: expected a non-empty token, got an empty string (value not shown)"

      assert error(token: "  ") ==
               "invalid value for :token option: expected a non-empty token, got a blank string (value not shown)"

      forms =
        "expected a non-empty string, {:system, \"VAR\"}, {:file, \"/path\"}, " <>
          "{module, function, args} or a zero-arity function (value not shown)"

      for bad <- [123, String.to_atom(@do_token), {:env, @do_token}, [@do_token], {@do_token}] do
        assert error([token: bad], @do_token) == "invalid value for :token option: " <> forms
      end

      assert error(token: {:system, ""}) ==
               "invalid value for :token option: expected {:system, name} to name an environment variable (value not shown)"

      assert error(token: {:file, nil}) ==
               "invalid value for :token option: expected {:file, path} to name a file (value not shown)"
    end

    test "a token pasted into any option: the error names the option and the shape, no piece of the token" do
      for token <- [@do_token, @plain_token],
          {key, bad} <- [
            api_url: token,
            api_url: "ftp://api.example.com/" <> token,
            api_url: "http://api.example.com/" <> token,
            api_url: "https://" <> token <> "@api.example.com",
            api_url: "https://user:" <> token <> "@api.example.com/v2",
            api_url: "https://api.example.com/?token=" <> token,
            api_url: "https://api.example.com/#" <> token,
            api_url: String.to_atom(token),
            ca_file: "/nonexistent/" <> token,
            ca_file: {:file, token},
            node_basename: token <> "\n",
            node_basename: token <> ".app",
            node_basename: String.to_atom(token),
            name: String.to_atom(token),
            name: [token],
            tag_name: [token, ""],
            tag_name: {token},
            tag_name: String.to_atom(token),
            tag_name: List.duplicate(token, 65),
            regions: [token],
            regions: token,
            vpc: token,
            vpc: String.to_atom(token),
            health_check: token,
            health_check: {:tcp, token},
            health_check: {:tcp, port: token},
            health_check: {:tcp, port: 4000, timeout: token},
            health_check: {:tcp, port: 4000, token: token},
            network: token,
            network: String.to_atom(token),
            polling_interval: token,
            gpus: token,
            ipv6: token,
            api_timeout: token,
            max_backoff: token,
            max_requests_per_minute: token,
            coordinate: token,
            require_listed: token
          ] do
        message = error([{:token, @unread}, {key, bad}], token)
        assert message =~ "invalid value for #{inspect(key)} option: ", message
        # The shape it accepts.
        assert message =~ ~r/expected|accepted/, message
        assert message =~ "not shown", message
      end
    end

    test "a health check of an unknown kind names the kinds, not the kind given" do
      kind = String.to_atom(@plain_token)

      assert error([token: @unread, health_check: {kind, port: 1}], @plain_token) ==
               "invalid value for :health_check option: unknown kind; the kinds are [:tcp]"
    end

    test "the messages of each shape" do
      assert error(token: @unread, network: :vpc) ==
               "invalid value for :network option: expected `:private` or `:public` (value not shown)"

      assert error(token: @unread, polling_interval: 0) ==
               "invalid value for :polling_interval option: expected a positive integer (ms) (value not shown)"

      assert error(token: @unread, node_basename: "my.app") ==
               "invalid value for :node_basename option: expected the name part of a node name: " <>
                 "1-200 ASCII letters, digits, '_' or '-' (value not shown)"

      assert error(token: @unread, api_url: "http://api.digitalocean.com") ==
               "invalid value for :api_url option: plain http would send the token unencrypted; " <>
                 "http:// is only accepted for loopback hosts (value not shown)"

      assert error(token: @unread, api_url: "https://api.example.com?x=1") ==
               "invalid value for :api_url option: expected a URL with no credentials, query or fragment (value not shown)"

      assert error(token: @unread, ca_file: "/nonexistent/ca.pem") ==
               "invalid value for :ca_file option: expected a readable PEM file; the path given is not a regular file (path not shown)"

      assert error(token: @unread, vpc: "default-nyc3") ==
               "invalid value for :vpc option: expected `nil`, `:self` or a VPC's UUID (value not shown)"

      for bad <- [[], "nyc3", ["NYC3"], ["nyc3", ""], [:nyc3]] do
        assert error(token: @unread, regions: bad) ==
                 "invalid value for :regions option: expected `nil` or a list of region slugs (value not shown)"
      end

      for bad <- ["", [], ["web", ""], [:web], :web] do
        assert error(token: @unread, tag_name: bad) ==
                 "invalid value for :tag_name option: expected a non-empty string, a list of at most 64 of them, or nil (value not shown)"
      end

      for bad <- ["true", :all, 1] do
        assert error(token: @unread, gpus: bad) =~
                 "invalid value for :gpus option: expected `false`, `true` or `:only`"
      end

      assert error(token: @unread, name: :web) ==
               "invalid value for :name option: expected nil or a droplet name, a non-empty string (value not shown)"
    end

    test "combinations: tag_name with name, ipv6 on the private network" do
      assert error(token: @unread, tag_name: @do_token, name: @do_token) ==
               "invalid options :tag_name and :name: the DigitalOcean API filters by one or the other, not both"

      assert error(token: @unread, ipv6: true) ==
               "invalid option :ipv6: true needs network: :public; DigitalOcean has no private IPv6 addresses"

      assert %Config{ipv6: true, network: :public} =
               Config.new!(token: @unread, network: :public, ipv6: true)
    end

    test "unknown options are named, with the known ones; values are not shown" do
      known = inspect(Enum.sort(Config.keys()))

      assert error([token: @unread, tags: @do_token], @do_token) ==
               "unknown option(s) [:tags]; the known options are: #{known}"

      message = error([token: @do_token, foo: 1, bar: @do_token], @do_token)
      assert message =~ ~r/^unknown option\(s\) \[:(foo, :bar|bar, :foo)\]; /
      assert String.ends_with?(message, "the known options are: #{known}")
    end

    test "a config that is not a keyword list is not printed" do
      for bad <- [
            %{token: @do_token},
            @do_token,
            [@do_token],
            [{"token", @do_token}],
            {:token, @do_token},
            nil
          ] do
        assert error(bad, @do_token) ==
                 "expected the topology's config: to be a keyword list (value not shown)"
      end
    end
  end

  describe "caps" do
    test "tag_name: at most 64 tags" do
      tags = for i <- 1..64, do: "tag-#{i}"
      assert %Config{tag_name: ^tags} = Config.new!(token: @unread, tag_name: tags)
      assert error(token: @unread, tag_name: tags ++ ["tag-65"]) =~ "a list of at most 64 of them"
      # Counted as given: repeats are no way around the cap.
      assert error(token: @unread, tag_name: List.duplicate("web", 65)) =~ "at most 64"
    end

    test "regions: at most 64 slugs of at most 32 characters" do
      regions = for i <- 1..64, do: "r#{i}"
      assert %Config{regions: ^regions} = Config.new!(token: @unread, regions: regions)
      assert error(token: @unread, regions: regions ++ ["r65"]) =~ "invalid value for :regions"

      assert %Config{} = Config.new!(token: @unread, regions: [String.duplicate("a", 32)])

      assert error(token: @unread, regions: [String.duplicate("a", 33)]) =~
               "invalid value for :regions"
    end
  end

  describe "a value shaped like a DigitalOcean token is refused, naming the option" do
    test "in every text option that would accept it otherwise" do
      hex = String.replace_prefix(@do_token, "dop_v1_", "")
      ca_file = tmp_file!(@do_token)

      for token <- [
            @do_token,
            "doo_v1_" <> hex,
            "dor_v1_" <> hex,
            "DOP_V1_" <> String.upcase(hex)
          ],
          {key, value} <- [
            tag_name: token,
            tag_name: ["web", token],
            name: token,
            name: "web-" <> token,
            node_basename: token,
            api_url: "https://api.example.com/" <> token,
            api_url: "https://" <> token <> ".example.com"
          ] do
        assert error([{:token, @unread}, {key, value}], token) ==
                 "invalid value for #{inspect(key)} option: it looks like a DigitalOcean token (value not shown)"
      end

      assert error([token: @unread, ca_file: ca_file], @do_token) ==
               "invalid value for :ca_file option: it looks like a DigitalOcean token (value not shown)"
    end

    test "a shorter run of hex digits is no token" do
      short = "dop_v1_" <> String.duplicate("a", 63)
      assert %Config{name: ^short} = Config.new!(token: @unread, name: short)
    end
  end

  describe "a literal token: an option holding it, or a 12-character piece of it, is refused" do
    test "naming the option, never the value" do
      piece = binary_part(@plain_token, 17, 12)
      ca_file = tmp_file!("ca-" <> piece <> ".pem")

      for value <- [@plain_token, piece, "x" <> piece <> "y"],
          {key, given} <- [
            tag_name: value,
            tag_name: ["web", value],
            name: value,
            node_basename: value,
            api_url: "https://api.example.com/" <> value,
            api_url: "https://" <> value <> ".example.com"
          ] do
        assert error([{:token, @plain_token}, {key, given}], @plain_token) ==
                 "invalid value for #{inspect(key)} option: it holds (part of) the token (value not shown)"
      end

      assert error([token: @plain_token, ca_file: ca_file], @plain_token) ==
               "invalid value for :ca_file option: it holds (part of) the token (value not shown)"
    end

    test "in :regions and :vpc too" do
      token = "tok-0123nyc3abcdefgh-" <> @vpc

      assert error([token: token, regions: ["sfo3", "0123nyc3abcdefgh"]], token) ==
               "invalid value for :regions option: it holds (part of) the token (value not shown)"

      assert error([token: token, vpc: @vpc], token) ==
               "invalid value for :vpc option: it holds (part of) the token (value not shown)"
    end

    test "11 characters of it are fine: ordinary words must not be refused" do
      piece = binary_part(@plain_token, 17, 11)
      assert %Config{name: ^piece} = Config.new!(token: @plain_token, name: piece)
    end
  end

  describe "check_secret/2: the token of the other forms, once a poll has read it" do
    setup do
      ca_file = tmp_file!("ca-" <> binary_part(@plain_token, 3, 14) <> ".pem")
      {:ok, ca_file: ca_file}
    end

    test "names the option that holds it, or a 12-character piece of it", %{ca_file: ca_file} do
      piece = binary_part(@plain_token, 5, 12)
      slug = "0123nyc3abcdefgh"
      uuid_token = "prefix-" <> binary_part(@vpc, 10, 14) <> "-suffix"

      for {key, value, secret} <- [
            {:tag_name, @plain_token, @plain_token},
            {:tag_name, ["web", "db-" <> piece], @plain_token},
            {:name, "web-" <> piece, @plain_token},
            {:node_basename, piece, @plain_token},
            {:api_url, "https://api.example.com/v2/" <> piece, @plain_token},
            {:api_url, "https://" <> piece <> ".example.com", @plain_token},
            {:ca_file, ca_file, @plain_token},
            {:regions, ["sfo3", slug], "tok-" <> slug <> "-tok"},
            {:vpc, @vpc, uuid_token}
          ] do
        config = Config.new!([{:token, @unread}, {key, value}])

        assert Config.check_secret(config, secret) == {:error, {:token_in_option, key}},
               inspect(key)

        assert Config.check_secret(config, "an-unrelated-secret-value-0123456789") == :ok
      end
    end

    test "a config free of it passes; a piece of 11 characters, or a secret too short to look for, is fine" do
      config = Config.new!(token: @unread, tag_name: "web", node_basename: "app", vpc: :self)
      assert Config.check_secret(config, @plain_token) == :ok

      config = Config.new!(token: @unread, name: binary_part(@plain_token, 5, 11))
      assert Config.check_secret(config, @plain_token) == :ok

      # A short secret is one piece, searched whole.
      config = Config.new!(token: @unread, name: "web-s3cr3t")
      assert Config.check_secret(config, "s3cr3t") == {:error, {:token_in_option, :name}}
      assert Config.check_secret(config, "web") == :ok
    end

    test "its error reads without the value" do
      message = LibclusterDroplet.Error.format({:token_in_option, :name})
      assert message =~ ":name"
      assert LibclusterDroplet.Error.class({:token_in_option, :name}) == :token_in_option
    end
  end

  describe "fingerprint/1" do
    defp fingerprint(opts), do: Config.fingerprint(Config.new!([token: @unread] ++ opts))

    test "every selection option changes it" do
      base = fingerprint(tag_name: "web")

      variants = [
        [tag_name: "db"],
        [tag_name: ["web", "db"]],
        [name: "web"],
        [tag_name: "web", gpus: true],
        [tag_name: "web", gpus: :only],
        [tag_name: "web", vpc: :self],
        [tag_name: "web", vpc: @vpc],
        [tag_name: "web", regions: ["nyc3"]],
        [tag_name: "web", regions: ["nyc3", "sfo3"]],
        [tag_name: "web", network: :public],
        [tag_name: "web", network: :public, ipv6: true],
        [tag_name: "web", node_basename: "app"],
        [tag_name: "web", api_url: "http://127.0.0.1:4000"]
      ]

      prints = Enum.map(variants, &fingerprint/1)
      refute base in prints
      assert length(Enum.uniq(prints)) == length(variants), "two selections hash alike"

      assert fingerprint(network: :public) != fingerprint(network: :public, ipv6: true)
      assert fingerprint(vpc: :self) != fingerprint(vpc: @vpc)
    end

    test "order and repeats of tags and regions, and options outside selection, do not" do
      assert fingerprint(tag_name: ["web", "db"]) == fingerprint(tag_name: ["db", "web", "db"])
      assert fingerprint(tag_name: ["web"]) == fingerprint(tag_name: "web")

      assert fingerprint(regions: ["nyc3", "sfo3"]) ==
               fingerprint(regions: ["sfo3", "nyc3", "sfo3"])

      assert fingerprint(vpc: @vpc) == fingerprint(vpc: String.upcase(@vpc))

      for other <- [
            polling_interval: 1,
            health_check: {:tcp, port: 4000},
            api_timeout: 1,
            max_backoff: 1,
            max_requests_per_minute: 1,
            coordinate: false,
            require_listed: false,
            gpus: false
          ] do
        assert fingerprint([{:tag_name, "web"}, other]) == fingerprint(tag_name: "web"),
               inspect(other)
      end
    end

    test "a filter withheld (it held the token) hashes without raising, apart from the filter it held" do
      for {option, opts} <- [
            regions: [regions: ["sfo3", "nyc3"]],
            vpc: [vpc: @vpc],
            autoscale_pool: [autoscale_pool: "web-pool"],
            pool_health: [autoscale_pool: "web-pool", pool_health: ["healthy"]]
          ] do
        config = Config.new!([token: @unread] ++ opts)
        withheld = Config.withhold(config, option)
        assert is_integer(Config.fingerprint(withheld)), inspect(option)
        assert Config.fingerprint(withheld) != Config.fingerprint(config)
        assert Config.withheld(withheld) == {:error, {:token_in_option, option}}
      end
    end

    test "a config that sets no filter hashes exactly as 2.0.0 did" do
      config = Config.new!(token: @unread, tag_name: ["web", "db"], node_basename: "app")

      assert Config.fingerprint(config) ==
               :erlang.phash2({config.api_url, ["db", "web"], nil, :private, false, "app"})

      config = Config.new!(token: @unread, name: "web-1", network: :public, ipv6: true)

      assert Config.fingerprint(config) ==
               :erlang.phash2({config.api_url, nil, "web-1", :public, true, nil})
    end

    test "the filters set are hashed as one sorted list, beside the 2.0.0 tuple" do
      config =
        Config.new!(
          token: @unread,
          tag_name: "web",
          regions: ["sfo3", "nyc3"],
          vpc: :self,
          gpus: true
        )

      base = {config.api_url, "web", nil, :private, false, nil}

      assert Config.fingerprint(config) ==
               :erlang.phash2({base, [gpus: true, regions: ["nyc3", "sfo3"], vpc: :self]})
    end
  end

  describe "list_options/1 and list_droplets/1" do
    test "list_options/1 are what to list and how to reach the API, without the token" do
      config = Config.new!(token: @plain_token, tag_name: "web", ca_file: nil, api_timeout: 7)
      opts = Config.list_options(config)
      refute Keyword.has_key?(opts, :token)

      assert Enum.sort(opts) ==
               Enum.sort(
                 tag_name: "web",
                 name: nil,
                 gpus: false,
                 autoscale_pool: nil,
                 network: :private,
                 ipv6: false,
                 api_url: "https://api.digitalocean.com",
                 ca_file: nil,
                 api_timeout: 7
               )
    end

    test "list_droplets/1's defaults are the strategy's, for every option they share" do
      config = Config.new!(token: @plain_token)
      assert {:ok, request} = LibclusterDroplet.list_request(token: @plain_token)

      assert %{
               api_url: "https://api.digitalocean.com",
               tag_name: nil,
               name: nil,
               gpus: false,
               ca_file: nil,
               request_timeout_ms: 10_000,
               deadline_ms: 30_000,
               select: %{network: :private, ipv6: false}
             } = request

      assert request.api_url == config.api_url
      assert request.request_timeout_ms == config.api_timeout
      assert request.select == %{network: config.network, ipv6: config.ipv6}

      for {key, value} <- Config.list_options(config),
          key not in [:api_timeout, :network, :ipv6] do
        assert Map.fetch!(request, key) == value, inspect(key)
      end

      # The same schema: the same defaults, types and docs.
      for {key, spec} <- Config.listing_schema() do
        assert spec[:default] == Map.get(config, key) or key == :token, inspect(key)
      end
    end

    test "list_droplets/1 given anything but a keyword list: {:error, {:invalid_request, _}}, never printing it" do
      for bad <- [
            %{token: @do_token},
            @do_token,
            [@do_token],
            [{"token", @do_token}],
            [{:token, @do_token} | :improper],
            {:token, @do_token},
            nil
          ] do
        assert {:error, {:invalid_request, message}} = LibclusterDroplet.list_droplets(bad)
        assert message == "expected a keyword list of options (value not shown)"
        assert_no_piece(message, @do_token)
      end
    end

    test "list_droplets/1's bad options name the option, never the value" do
      for {key, bad} <- [
            token: String.to_atom(@do_token),
            api_url: @do_token,
            tag_name: [@do_token, ""],
            name: String.to_atom(@do_token),
            network: @do_token,
            per_page: @do_token,
            deadline: @do_token,
            keep_alive: @do_token,
            max_pages: @do_token
          ] do
        opts = Keyword.merge([token: @do_token], [{key, bad}])
        assert {:error, {:invalid_request, message}} = LibclusterDroplet.list_droplets(opts)

        assert message =~ "invalid value for #{inspect(key)} option: ", message
        assert_no_piece(message, @do_token)
      end

      # The strategy's options that do not list are unknown here.
      assert {:error, {:invalid_request, "unknown option(s) [:regions]" <> _}} =
               LibclusterDroplet.list_droplets(token: @do_token, regions: ["nyc3"])
    end
  end
end
