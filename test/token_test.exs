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

    assert {:error,
            {:invalid_request,
             "invalid value for :token option: expected a non-empty string" <> _}} =
             LibclusterDroplet.list_request(token: 42)
  end

  describe "new/1 and literal/1" do
    test "every form is accepted; a literal's token is known without reading anything" do
      assert {:ok, @secret} = Token.literal(new!(@secret))

      for source <- [
            {:system, @var},
            {:file, "/run/secrets/do"},
            {System, :get_env, [@var]},
            fn -> @secret end
          ] do
        assert Token.literal(new!(source)) == :error
      end
    end

    test "validate_option/1 keeps a validated token; the message of a bad one shows no value" do
      token = new!({:system, @var})
      assert Token.validate_option(token) == {:ok, token}
      assert {:error, message} = Token.validate_option(123)
      assert message =~ "(value not shown)"
    end

    test "describe/1 names the source, never the token" do
      assert Token.describe(new!(@secret)) == "a literal string"
      assert Token.describe(new!(fn -> @secret end)) == "a function"
      assert Token.describe(new!({System, :get_env, [@secret]})) == "System.get_env/1"
      assert Token.describe(new!({:system, @var})) == "the environment variable #{@var}"
    end
  end

  describe "Redact: the token's pieces" do
    alias LibclusterDroplet.Redact

    test "every 12-character window of the token is a piece; 11 characters are not" do
      pieces = Redact.pieces(@secret)
      assert Redact.window() == 12

      for at <- 0..(byte_size(@secret) - 12) do
        assert Redact.holds?("x " <> binary_part(@secret, at, 12) <> " y", pieces), "window #{at}"
        refute Redact.holds?(binary_part(@secret, at, 11), pieces)
      end

      assert Redact.holds?("scope " <> @secret, pieces)
      refute Redact.holds?("droplet:read tag:read", pieces)
    end

    test "a short token is one piece, searched whole; one under 4 characters is not searched" do
      pieces = Redact.pieces("s3cr3t")
      assert Redact.holds?("web-s3cr3t-1", pieces)
      refute Redact.holds?("s3cr3", pieces)
      assert Redact.pieces("abc") == nil
      refute Redact.holds?("abc", nil)
    end

    test "token_shaped?/1: dop_v1_, doo_v1_ or dor_v1_ and 64 hex digits, in any case, anywhere" do
      hex = String.duplicate("0a1B", 16)

      for prefix <- ["dop_v1_", "doo_v1_", "dor_v1_", "DOP_V1_"] do
        assert Redact.token_shaped?(prefix <> hex)
        assert Redact.token_shaped?("https://x/" <> prefix <> hex <> "/y")
      end

      refute Redact.token_shaped?("dop_v1_" <> String.slice(hex, 0, 63))
      refute Redact.token_shaped?("dox_v1_" <> hex)
      refute Redact.token_shaped?("dop_v2_" <> hex)
      refute Redact.token_shaped?("dop_v1_" <> String.duplicate("g", 64))
      refute Redact.token_shaped?(@secret)
    end
  end

  describe "TokenPieces.assert_no_piece/2, the tests' hostile search" do
    import LibclusterDroplet.TokenPieces

    # No 12-character window of it repeats.
    @unique "dop_v1_" <> Base.encode16(:crypto.hash(:sha256, "token pieces"), case: :lower)

    test "finds any 12-character piece, names its position, never shows the token" do
      for at <- [0, 20, byte_size(@unique) - 12] do
        text = "error: " <> binary_part(@unique, at, 12) <> "!"
        error = assert_raise ExUnit.AssertionError, fn -> assert_no_piece(text, @unique) end
        assert error.message == "the text holds the token's 12-character window at position #{at}"
      end

      # Any term, inspected in full.
      error =
        assert_raise ExUnit.AssertionError, fn ->
          assert_no_piece(%{deep: [{:x, binary_part(@unique, 30, 14)}]}, @unique)
        end

      assert error.message =~ "at position 30"
    end

    test "11 characters, or nothing of it, pass" do
      assert assert_no_piece("x" <> binary_part(@unique, 20, 11) <> "y", @unique) == :ok
      assert assert_no_piece("nothing here", @unique) == :ok
      # A short token is looked for whole.
      assert_raise ExUnit.AssertionError, fn -> assert_no_piece("a s3cr3t b", "s3cr3t") end
    end
  end
end
