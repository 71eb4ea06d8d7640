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
    assert {:ok, :"web@::1"} = NodeName.build("web", "::1")
  end
end
