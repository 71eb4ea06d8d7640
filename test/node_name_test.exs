defmodule LibclusterDroplet.NodeNameTest do
  use ExUnit.Case, async: true
  doctest LibclusterDroplet.NodeName
  doctest LibclusterDroplet.Error

  alias LibclusterDroplet.NodeName

  test "names Erlang would refuse are rejected" do
    for bad <- ["example.com", "my app", "wéb", "a@b", "", String.duplicate("a", 201), "tab\t"] do
      refute NodeName.valid_basename?(bad), bad
      assert {:error, :invalid_basename} = NodeName.build(bad, "10.0.0.1")
    end
  end

  test "addresses must be IP literals" do
    assert {:error, :invalid_address} = NodeName.build("web", "10.0.0")
    assert {:error, :invalid_address} = NodeName.build("web", "example.com")
    assert {:error, :invalid_address} = NodeName.build("web", "")
    assert {:error, :invalid_address} = NodeName.build("web", "10.0.0.1 ")
    assert {:ok, :"web@::1"} = NodeName.build("web", "::1")
  end

  test "the basename is checked before the address" do
    assert {:error, :invalid_basename} = NodeName.build("x.y", "not-an-ip")
  end

  test "names at the bounds" do
    assert {:ok, _} = NodeName.build(String.duplicate("a", 200), "10.0.0.1")
    assert NodeName.valid_basename?("A_z-9")
    refute NodeName.valid_basename?(nil)
    refute NodeName.valid_basename?(:web)
    refute NodeName.valid_basename?("web\n")
  end

  test "host/1: the part after the @" do
    assert NodeName.host(:"app@10.0.0.2") == "10.0.0.2"
    assert NodeName.host(:"app@2604:a880::1") == "2604:a880::1"
    assert NodeName.host(:nonode@nohost) == "nohost"
    assert NodeName.host(:no_host) == ""
  end
end
