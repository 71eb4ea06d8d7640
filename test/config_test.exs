defmodule Cluster.Strategy.Droplet.ConfigTest do
  use ExUnit.Case, async: true

  alias Cluster.Strategy.Droplet.Config

  @prefix "Cluster.Strategy.Droplet: "
  @token "dop_v1_SECRET_CONFIG_TOKEN"
  @known "[:token, :network, :ipv6, :tag_name, :name, :gpus, :vpc, :regions, :node_basename, :health_check, :polling_interval, " <>
           ":api_url, :ca_file, :api_timeout, :max_backoff, :max_requests_per_minute, :coordinate, " <>
           ":require_listed]"

  defp message(opts) do
    error = assert_raise ArgumentError, fn -> Config.new!(opts) end
    refute error.message =~ @token, "the token leaked into: #{error.message}"
    String.replace_prefix(error.message, @prefix, "")
  end

  describe "defaults" do
    test "only :token is required; the rest take the original strategy's defaults" do
      config = Config.new!(token: @token)

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
               ca_file: nil
             } = config

      assert {:ok, @token, _} = LibclusterDroplet.Token.fetch(config.token)
    end

    test "health_check timeout defaults to 500 ms" do
      assert %Config{health_check: {:tcp, port: 4000, timeout: 500}} =
               Config.new!(token: @token, health_check: {:tcp, port: 4000})
    end

    test "any positive polling_interval is accepted" do
      assert %Config{polling_interval: 1} = Config.new!(token: @token, polling_interval: 1)
      assert %Config{polling_interval: 100} = Config.new!(token: @token, polling_interval: 100)
    end

    test "a trailing slash of api_url is dropped, http is fine on loopback" do
      assert %Config{api_url: "http://127.0.0.1:4000"} =
               Config.new!(token: @token, api_url: "http://127.0.0.1:4000/")

      assert %Config{api_url: "http://[::1]:4000"} =
               Config.new!(token: @token, api_url: "http://[::1]:4000")

      assert %Config{api_url: "http://localhost:9"} =
               Config.new!(token: @token, api_url: "http://localhost:9")
    end

    test "the token may be a zero-arity function, {:system, var}, {:file, path} or an MFA" do
      for source <- [
            fn -> @token end,
            {:system, "DIGITALOCEAN_TOKEN"},
            {:file, "/run/secrets/do_token"},
            {System, :get_env, ["DIGITALOCEAN_TOKEN"]}
          ] do
        assert %LibclusterDroplet.Token{} = Config.new!(token: source).token
      end
    end

    test "inspect never shows the token" do
      config = Config.new!(token: @token)
      refute inspect(config) =~ @token
      refute inspect(config, structs: false) =~ @token
      refute :io_lib.format(~c"~p", [config]) |> IO.iodata_to_binary() =~ @token
    end
  end

  describe "each bad option names itself and what is accepted" do
    test "token" do
      assert message([]) ==
               "missing required option :token: expected a DigitalOcean API token, such as {:system, \"DIGITALOCEAN_TOKEN\"}"

      assert message(token: "") ==
               "invalid option :token: expected a non-empty token, got an empty string"

      assert message(token: "  ") ==
               "invalid option :token: expected a non-empty token, got a blank string"

      forms =
        "expected a non-empty string, {:system, \"VAR\"}, {:file, \"/path\"}, " <>
          "{module, function, args} or a zero-arity function"

      assert message(token: 123) == "invalid option :token: " <> forms
      assert message(token: String.to_atom(@token)) == "invalid option :token: " <> forms
      assert message(token: {:env, @token}) == "invalid option :token: " <> forms

      assert message(token: {:system, ""}) ==
               "invalid option :token: expected {:system, name} to name an environment variable"

      assert message(token: {:file, nil}) ==
               "invalid option :token: expected {:file, path} to name a file"
    end

    test "tag_name and name together" do
      assert message(token: @token, tag_name: "web", name: "web-1") ==
               "invalid options :tag_name and :name: the DigitalOcean API filters by one or the other, not both; " <>
                 "got tag_name: \"web\" and name: \"web-1\""
    end

    test "network" do
      assert message(token: @token, network: :vpc) ==
               "invalid option :network: expected one of [:private, :public], got: :vpc"

      assert message(token: @token, network: "public") ==
               "invalid option :network: expected one of [:private, :public], got: \"public\""
    end

    test "ipv6 with the private network, explicit or by default" do
      assert message(token: @token, network: :private, ipv6: true) ==
               "invalid option :ipv6: true with network: :private; DigitalOcean has no private IPv6 addresses, " <>
                 "so use network: :public with ipv6: true, or ipv6: false"

      assert message(token: @token, ipv6: true) ==
               "invalid option :ipv6: true needs network: :public; the network defaults to :private " <>
                 "and DigitalOcean has no private IPv6 addresses"

      assert message(token: @token, ipv6: "yes") ==
               "invalid option :ipv6: expected true or false, got: \"yes\""

      assert %Config{ipv6: true, network: :public} =
               Config.new!(token: @token, network: :public, ipv6: true)
    end

    test "coordinate and require_listed: true or false, true by default" do
      assert %Config{coordinate: true, require_listed: true} = Config.new!(token: @token)

      assert %Config{coordinate: false, require_listed: false} =
               Config.new!(token: @token, coordinate: false, require_listed: false)

      for key <- [:coordinate, :require_listed], value <- ["false", nil, 0] do
        assert message([{:token, @token}, {key, value}]) ==
                 "invalid option #{inspect(key)}: expected true or false, got: #{inspect(value)}"
      end
    end

    test "health_check" do
      assert message(token: @token, health_check: {:tcp, port: 0}) ==
               "invalid option :health_check: expected :port to be an integer in 1..65535, got: 0"

      assert message(token: @token, health_check: {:tcp, port: 65_536}) ==
               "invalid option :health_check: expected :port to be an integer in 1..65535, got: 65536"

      assert message(token: @token, health_check: {:tcp, port: "4000"}) ==
               "invalid option :health_check: expected :port to be an integer in 1..65535, got: \"4000\""

      assert message(token: @token, health_check: {:tcp, timeout: 100}) ==
               "invalid option :health_check: missing :port; expected {:tcp, port: 1..65535, timeout: ms}"

      assert message(token: @token, health_check: {:tcp, port: 4000, timeout: 0}) ==
               "invalid option :health_check: expected :timeout to be a positive integer (ms), got: 0"

      assert message(token: @token, health_check: {:tcp, port: 4000, timeout: 1.5}) ==
               "invalid option :health_check: expected :timeout to be a positive integer (ms), got: 1.5"

      assert message(token: @token, health_check: {:tcp, port: 4000, retries: 3}) ==
               "invalid option :health_check: unknown key(s) [:retries]; expected {:tcp, port: port, timeout: ms}"

      assert message(token: @token, health_check: {:http, port: 4000}) ==
               "invalid option :health_check: expected nil or {:tcp, port: 1..65535, timeout: ms}, " <>
                 "got: {:http, [port: 4000]}"

      assert message(token: @token, health_check: :tcp) ==
               "invalid option :health_check: expected nil or {:tcp, port: 1..65535, timeout: ms}, got: :tcp"
    end

    test "polling_interval and the other durations" do
      for value <- [0, -1, 1.5, "5000", nil] do
        assert message(token: @token, polling_interval: value) ==
                 "invalid option :polling_interval: expected a positive integer (ms), got: #{inspect(value)}"
      end

      assert message(token: @token, api_timeout: 0) ==
               "invalid option :api_timeout: expected a positive integer (ms), got: 0"

      assert message(token: @token, max_backoff: -1) ==
               "invalid option :max_backoff: expected a positive integer (ms), got: -1"

      assert message(token: @token, max_requests_per_minute: 0) ==
               "invalid option :max_requests_per_minute: expected a positive integer, got: 0"
    end

    test "unknown keys, without echoing the token" do
      assert message(token: @token, tags: "web") ==
               "unknown option(s) [:tags]; the known options are: #{@known}"

      assert message(token: @token, foo: 1, bar: 2) ==
               "unknown option(s) [:bar, :foo]; the known options are: #{@known}"
    end

    test "filters" do
      for bad <- ["", [], ["web", ""], [:web], :web] do
        assert message(token: @token, tag_name: bad) ==
                 "invalid option :tag_name: expected a non-empty string, a non-empty list of them, or nil, " <>
                   "got: #{inspect(bad)}"
      end

      assert message(token: @token, tag_name: ["web", "db"], name: "web-1") ==
               "invalid options :tag_name and :name: the DigitalOcean API filters by one or the other, not both; " <>
                 "got tag_name: [\"web\", \"db\"] and name: \"web-1\""

      assert message(token: @token, name: :web) ==
               "invalid option :name: expected a non-empty string or nil, got: :web"

      for bad <- [nil, "true", :all, 1] do
        assert message(token: @token, gpus: bad) ==
                 "invalid option :gpus: expected one of [false, true, :only], got: #{inspect(bad)}"
      end

      for bad <- ["default-nyc3", "760e09ef-dc84-11e8-981e", :other, ""] do
        assert message(token: @token, vpc: bad) ==
                 "invalid option :vpc: expected nil, :self or a VPC's UUID " <>
                   "(such as \"760e09ef-dc84-11e8-981e-3cfdfeaae000\"), got: #{inspect(bad)}"
      end

      for bad <- [[], "nyc3", ["NYC3"], ["nyc3", ""], [:nyc3]] do
        assert message(token: @token, regions: bad) ==
                 "invalid option :regions: expected nil or a non-empty list of region slugs " <>
                   "(such as [\"nyc3\", \"sfo3\"]), got: #{inspect(bad)}"
      end
    end

    test "several tags, GPU droplets, a VPC and regions are accepted" do
      config =
        Config.new!(
          token: @token,
          tag_name: ["web", "db", "web"],
          gpus: :only,
          vpc: "760E09EF-DC84-11E8-981E-3CFDFEAAE000",
          regions: ["nyc3", "sfo3", "nyc3"]
        )

      # Repeats dropped; the UUID in the API's lower case.
      assert %Config{
               tag_name: ["web", "db"],
               gpus: :only,
               vpc: "760e09ef-dc84-11e8-981e-3cfdfeaae000",
               regions: ["nyc3", "sfo3"]
             } = config

      assert %Config{gpus: true, vpc: :self, tag_name: "web"} =
               Config.new!(token: @token, gpus: true, vpc: :self, tag_name: "web")
    end

    test "node_basename must be usable as a node name" do
      assert message(token: @token, node_basename: "my.app") ==
               "invalid option :node_basename: expected the name part of a node name " <>
                 "(1-200 ASCII letters, digits, '_' or '-'), got: \"my.app\""

      assert message(token: @token, node_basename: :app) ==
               "invalid option :node_basename: expected a string or nil, got: :app"
    end

    test "api_url" do
      assert message(token: @token, api_url: "ftp://example.com") ==
               "invalid option :api_url: expected an http(s) URL such as \"https://api.digitalocean.com\", " <>
                 "got: \"ftp://example.com\""

      assert message(token: @token, api_url: "http://api.digitalocean.com") ==
               "invalid option :api_url: plain http would send the token unencrypted; " <>
                 "http:// is only accepted for loopback hosts, got: \"http://api.digitalocean.com\""

      assert message(token: @token, api_url: "https://user:pw@api.example.com") ==
               "invalid option :api_url: expected no credentials, query or fragment, " <>
                 "got: \"https://[REDACTED]@api.example.com\""
    end

    test "api_url errors never repeat credentials, a query, a fragment or a value that is no URL" do
      for url <- [
            "https://#{@token}@api.digitalocean.com",
            "https://user:#{@token}@api.digitalocean.com/v2",
            "https://api.digitalocean.com?token=#{@token}",
            "https://api.digitalocean.com/#{"x"}##{@token}",
            "http://#{@token}@api.digitalocean.com",
            @token,
            "https:#{@token}",
            "ftp://#{@token}@example.com"
          ] do
        text = message(token: "t0ken-value", api_url: url)
        assert text =~ "invalid option :api_url", text
        refute text =~ String.slice(@token, 7, 20), text
      end

      assert message(token: @token, api_url: "https://api.digitalocean.com?token=x#f") ==
               "invalid option :api_url: expected no credentials, query or fragment, " <>
                 "got: \"https://api.digitalocean.com?[REDACTED]#[REDACTED]\""

      assert message(token: @token, api_url: "dop_v1_abc") ==
               "invalid option :api_url: expected an http(s) URL such as \"https://api.digitalocean.com\", " <>
                 "got: a value that is not a URL (not shown: it may be a secret)"
    end

    test "ca_file" do
      assert message(token: @token, ca_file: "/nonexistent/ca.pem") ==
               "invalid option :ca_file: expected a readable PEM file, \"/nonexistent/ca.pem\" does not exist"
    end

    test "a config that is not a keyword list is not printed" do
      assert message(%{token: @token}) == "expected the topology's config: to be a keyword list"
    end
  end

  describe "fingerprint/1" do
    defp fingerprint(opts), do: Config.fingerprint(Config.new!([token: @token] ++ opts))

    test "every selection option changes it" do
      base = fingerprint(tag_name: "web")

      for opts <- [
            [tag_name: "db"],
            [tag_name: ["web", "db"]],
            [tag_name: "web", gpus: true],
            [tag_name: "web", gpus: :only],
            [tag_name: "web", vpc: :self],
            [tag_name: "web", vpc: "760e09ef-dc84-11e8-981e-3cfdfeaae000"],
            [tag_name: "web", regions: ["nyc3"]],
            [tag_name: "web", regions: ["nyc3", "sfo3"]],
            [name: "web"],
            [tag_name: "web", network: :public],
            [tag_name: "web", node_basename: "app"]
          ] do
        refute fingerprint(opts) == base, inspect(opts)
      end

      assert fingerprint(tag_name: "web", regions: ["nyc3"]) !=
               fingerprint(tag_name: "web", regions: ["sfo3"])

      assert fingerprint(vpc: :self) != fingerprint(vpc: "760e09ef-dc84-11e8-981e-3cfdfeaae000")
    end

    test "order and repeats of tags and regions, and options outside selection, do not" do
      assert fingerprint(tag_name: ["web", "db"]) == fingerprint(tag_name: ["db", "web", "db"])
      assert fingerprint(tag_name: ["web"]) == fingerprint(tag_name: "web")

      assert fingerprint(regions: ["nyc3", "sfo3"]) ==
               fingerprint(regions: ["sfo3", "nyc3", "sfo3"])

      assert fingerprint(tag_name: "web", polling_interval: 1) == fingerprint(tag_name: "web")
    end

    test "a config without the newer options hashes as before they existed" do
      config = Config.new!(token: @token, tag_name: "web", node_basename: "app")

      assert Config.fingerprint(config) ==
               :erlang.phash2({config.api_url, "web", nil, :private, false, "app"})
    end
  end
end
