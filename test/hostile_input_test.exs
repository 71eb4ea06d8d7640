defmodule LibclusterDroplet.HostileInputTest do
  use ExUnit.Case, async: true
  alias LibclusterDroplet.{Share, Log, Explain}

  @tag_ :libcluster_droplet_share
  @payload %{from: :a@h, fingerprint: 1, interval: 5_000, seq: 1, listed_at: 1, not_before: nil}
  @selected {1, "a", :active, "10.0.0.1", :selected, :"a@10.0.0.1", nil}

  test "B1: an improper list of verdicts or droplets is malformed, not a crash" do
    assert Share.decode({@tag_, 3, :t, Map.put(@payload, :verdicts, [@selected | :x])}) ==
             {:error, :malformed}

    assert Share.decode({@tag_, 2, :t, Map.put(@payload, :droplets, [{"a", "10.0.0.1"} | :x])}) ==
             {:error, :malformed}
  end

  test "B2: a version 3 or 2 share of the wrong shape is malformed, not another version" do
    assert Share.decode({@tag_, 3, :t, @payload}) == {:error, :malformed}
    assert Share.decode({@tag_, 3, :t, [@payload]}) == {:error, :malformed}
    assert Share.decode({@tag_, 3, "t", Map.put(@payload, :verdicts, [])}) == {:error, :malformed}
    assert Share.decode({@tag_, 2, :t, @payload}) == {:error, :malformed}
  end

  test "B3: a verdict's why is checked: a share cannot crash the strategy's log or explain" do
    unusable = {1, "a", :active, "10.0.0.1", :unusable_name, nil, :garbage}
    decoded = Share.decode({@tag_, 3, :t, Map.put(@payload, :verdicts, [unusable])})

    case decoded do
      {:error, :malformed} -> :ok
      {:ok, share} -> Log.unusable(MapSet.new(), :t, share.verdicts)
    end

    outside = {1, "a", :active, "10.0.0.1", :outside_filters, nil, :oops}

    case Share.decode({@tag_, 3, :t, Map.put(@payload, :verdicts, [outside])}) do
      {:error, :malformed} ->
        :ok

      {:ok, share} ->
        entry = %Explain.Entry{verdict: hd(share.verdicts), stage: :outside_filters}
        assert is_binary(Explain.Format.detail(entry, %Explain.Facts{}))
    end
  end

  test "B4: list_droplets/1 refuses an option holding the token it reads, before sending anything" do
    token = "dop_v1_" <> String.duplicate("ab12", 16)
    url = "http://127.0.0.1:#{LibclusterDroplet.TestCluster.free_port()}"

    assert LibclusterDroplet.list_droplets(token: token, api_url: url, tag_name: token) ==
             {:error, {:token_in_option, :tag_name}}

    assert LibclusterDroplet.list_droplets(
             token: token,
             api_url: url,
             name: binary_part(token, 10, 14)
           ) ==
             {:error, {:token_in_option, :name}}
  end

  test "B5 (cosmetic): an option given twice is named as repeated, not unknown" do
    {:error, message} =
      Cluster.Strategy.Droplet.Config.new(token: "t0ken-value", tag_name: "a", tag_name: "b")

    refute message =~ "unknown option(s) [:tag_name]"
  end
end
