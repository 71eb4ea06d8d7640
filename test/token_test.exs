defmodule LibclusterDroplet.TokenTest do
  @moduledoc false
  # Not async: it sets environment variables.
  use ExUnit.Case, async: false

  alias LibclusterDroplet.Token

  doctest Token

  @secret "dop_v1_TOKENTEST_0123456789abcdef0123456789abcdef0123456789abcdef01234567"
  @var "LIBCLUSTER_DROPLET_TOKEN_TEST"

  setup do
    dir = Path.join(System.tmp_dir!(), "token_test_#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    on_exit(fn -> File.rm_rf!(dir) end)
    on_exit(fn -> System.delete_env(@var) end)
    {:ok, dir: dir}
  end

  defp new!(source) do
    {:ok, token} = Token.new(source)
    token
  end

  defp unavailable(token) do
    assert {:error, {:token_unavailable, detail}} = Token.fetch(token)
    refute detail =~ "TOKENTEST"
    detail
  end

  describe "{:system, var}" do
    test "is read at every fetch, so a rotated value is picked up" do
      token = new!({:system, @var})
      System.put_env(@var, @secret)
      assert {:ok, @secret, token} = Token.fetch(token)
      System.put_env(@var, "rotated-token\n")
      assert {:ok, "rotated-token", _} = Token.fetch(token)
    end

    test "unset, empty or holding spaces is unavailable, naming the variable" do
      token = new!({:system, @var})
      assert unavailable(token) == "the environment variable #{@var} is not set"
      System.put_env(@var, "  ")
      assert unavailable(token) == "the environment variable #{@var} is empty"
      System.put_env(@var, "a TOKENTEST b")

      assert unavailable(token) ==
               "the environment variable #{@var} holds characters a token cannot have"
    end
  end

  describe "{:file, path}" do
    test "is read once, trimmed, and again when the file changes", %{dir: dir} do
      path = Path.join(dir, "token")
      File.write!(path, @secret <> "\n")
      token = new!({:file, path})
      assert {:ok, @secret, token} = Token.fetch(token)

      File.write!(path, "a-new-and-longer-token-than-before-" <> @secret)
      assert {:ok, "a-new-and-longer-token-than-before-" <> @secret, _} = Token.fetch(token)
    end

    test "a rewrite that keeps the size and time is read after forget/1 (a 401)", %{dir: dir} do
      path = Path.join(dir, "token")
      File.write!(path, @secret)
      {:ok, %File.Stat{mtime: mtime}} = File.stat(path, time: :posix)
      token = new!({:file, path})
      assert {:ok, @secret, token} = Token.fetch(token)

      rotated = String.replace(@secret, "TOKENTEST", "ROTATED__")
      File.write!(path, rotated)
      File.touch!(path, mtime)

      assert {:ok, @secret, token} = Token.fetch(token), "unchanged stat: the kept token"
      assert {:ok, ^rotated, _} = Token.fetch(Token.forget(token))
    end

    test "missing, empty, a directory, a FIFO or oversized is unavailable, naming the file", %{
      dir: dir
    } do
      missing = Path.join(dir, "missing")

      assert unavailable(new!({:file, missing})) ==
               "the token file #{missing} cannot be read: no such file or directory"

      empty = Path.join(dir, "empty")
      File.write!(empty, "\n")
      assert unavailable(new!({:file, empty})) == "the token file #{empty} is empty"

      assert unavailable(new!({:file, dir})) ==
               "the token file #{dir} is not a regular file (directory)"

      fifo = Path.join(dir, "fifo")
      {_, 0} = System.cmd("mkfifo", [fifo])
      # Refused from its stat, never opened: opening a FIFO would block.
      assert unavailable(new!({:file, fifo})) ==
               "the token file #{fifo} is not a regular file (other)"

      big = Path.join(dir, "big")
      File.write!(big, String.duplicate("x", 64 * 1024 + 1))
      assert unavailable(new!({:file, big})) == "the token file #{big} is larger than 65536 bytes"

      unreadable = Path.join(dir, "unreadable")
      File.write!(unreadable, @secret)
      File.chmod!(unreadable, 0o000)

      # Root reads any file; the check only means something for other users.
      unless File.read(unreadable) == {:ok, @secret} do
        assert unavailable(new!({:file, unreadable})) ==
                 "the token file #{unreadable} cannot be read: permission denied"
      end
    end
  end

  describe "functions" do
    test "an MFA and a zero-arity function are called at every fetch" do
      System.put_env(@var, @secret)
      assert {:ok, @secret, _} = Token.fetch(new!({System, :get_env, [@var]}))
      assert {:ok, @secret, _} = Token.fetch(new!(fn -> System.get_env(@var) end))
      System.put_env(@var, "second")
      assert {:ok, "second", _} = Token.fetch(new!({System, :get_env, [@var]}))
    end

    test "one that raises, throws or returns no string is unavailable; its message is not repeated" do
      assert unavailable(new!(fn -> raise ArgumentError, "bad " <> @secret end)) ==
               "the :token function raised ArgumentError"

      assert unavailable(new!(fn -> throw(@secret) end)) == "the :token function failed (throw)"
      assert unavailable(new!(fn -> nil end)) == "the :token function did not return a string"

      assert unavailable(new!({System, :get_env, [@var]})) ==
               "the :token function {System, :get_env, 1} did not return a string"

      assert unavailable(new!({Nope.Module, :token, []})) ==
               "the :token function {Nope.Module, :token, 0} raised UndefinedFunctionError"
    end
  end

  test "inspect and ~p show the source, never the token", %{dir: dir} do
    path = Path.join(dir, "token")
    File.write!(path, @secret)
    {:ok, _, from_file} = Token.fetch(new!({:file, path}))

    for token <- [new!(@secret), from_file, new!({:system, @var}), new!(fn -> @secret end)] do
      refute inspect(token) =~ "TOKENTEST"
      refute inspect(token, structs: false, limit: :infinity) =~ "TOKENTEST"
      refute :io_lib.format(~c"~p", [token]) |> IO.iodata_to_binary() =~ "TOKENTEST"
    end

    assert inspect(from_file) == "#LibclusterDroplet.Token<the file #{path}>"
    assert inspect(new!(@secret)) == "#LibclusterDroplet.Token<a literal string>"
  end

  test "LibclusterDroplet.list_request/1 reads every form and reports an unreadable one" do
    System.put_env(@var, @secret)
    assert {:ok, %{token: @secret}} = LibclusterDroplet.list_request(token: {:system, @var})
    System.delete_env(@var)

    assert LibclusterDroplet.list_request(token: {:system, @var}) ==
             {:error, {:token_unavailable, "the environment variable #{@var} is not set"}}

    assert {:error, {:invalid_request, "token: expected a non-empty string" <> _}} =
             LibclusterDroplet.list_request(token: 42)
  end
end
