defmodule LibclusterDroplet.Token do
  @moduledoc """
  Where the API token comes from, the `:token` option (`{:system, var}`,
  `{:file, path}`, `{m, f, a}`, a zero-arity function or the token itself:
  see [the token](configuration.md#the-token)), and reading it when a poll
  starts. The token is only ever held in closures. One that cannot be read
  fails that poll with `{:token_unavailable, detail}`, which names the
  source, never a value.
  """

  @typedoc "The forms of the `:token` option."
  @type source ::
          String.t()
          | (() -> String.t())
          | {:system, String.t()}
          | {:file, Path.t()}
          | {module(), atom(), list()}

  @typedoc "A validated source, with what was last read from a file."
  @opaque t :: %__MODULE__{
            source:
              {:literal, (() -> String.t())}
              | {:function, (() -> term())}
              | {:system, String.t()}
              | {:file, Path.t()}
              | {:mfa, {module(), atom(), list()}},
            file: nil | {stat_key :: term(), (() -> String.t())}
          }

  @enforce_keys [:source]
  defstruct source: nil, file: nil

  @doc """
  Validates a `:token` option; the error never quotes the value.

      iex> {:ok, _} = LibclusterDroplet.Token.new({:system, "DIGITALOCEAN_TOKEN"})
      iex> LibclusterDroplet.Token.new({:system, ""})
      {:error, "expected {:system, name} to name an environment variable"}
  """
  @spec new(term()) :: {:ok, t()} | {:error, String.t()}
  def new(""), do: {:error, "expected a non-empty token, got an empty string"}

  def new(token) when is_binary(token) do
    if String.trim(token) == "",
      do: {:error, "expected a non-empty token, got a blank string"},
      else: {:ok, %__MODULE__{source: {:literal, fn -> token end}}}
  end

  def new(fun) when is_function(fun, 0), do: {:ok, %__MODULE__{source: {:function, fun}}}

  def new({:system, var}) when is_binary(var) and var != "",
    do: {:ok, %__MODULE__{source: {:system, var}}}

  def new({:system, _}), do: {:error, "expected {:system, name} to name an environment variable"}

  def new({:file, path}) when is_binary(path) and path != "",
    do: {:ok, %__MODULE__{source: {:file, path}}}

  def new({:file, _}), do: {:error, "expected {:file, path} to name a file"}

  def new({m, f, a}) when is_atom(m) and is_atom(f) and is_list(a),
    do: {:ok, %__MODULE__{source: {:mfa, {m, f, a}}}}

  def new(_other) do
    {:error,
     "expected a non-empty string, {:system, \"VAR\"}, {:file, \"/path\"}, " <>
       "{module, function, args} or a zero-arity function"}
  end

  @doc false
  # NimbleOptions' custom validator of `:token`.
  @spec validate_option(term()) :: {:ok, t()} | {:error, String.t()}
  def validate_option(%__MODULE__{} = token), do: {:ok, token}

  def validate_option(source),
    do: with({:error, message} <- new(source), do: {:error, message <> " (value not shown)"})

  @doc false
  # The token of a literal source, known without reading anything.
  @spec literal(t()) :: {:ok, String.t()} | :error
  def literal(%__MODULE__{source: {:literal, fun}}), do: {:ok, fun.()}
  def literal(%__MODULE__{}), do: :error

  @doc """
  Reads the token now, with the source to keep for next time (a file's
  content is kept until the file changes).
  """
  @spec fetch(t()) :: {:ok, String.t(), t()} | {:error, {:token_unavailable, String.t()}}
  def fetch(%__MODULE__{source: {:literal, fun}} = token), do: {:ok, fun.(), token}

  def fetch(%__MODULE__{source: {:function, fun}} = token),
    do: call(fun, "the :token function", token)

  def fetch(%__MODULE__{source: {:mfa, {m, f, a}}} = token),
    do: call(fn -> apply(m, f, a) end, "the :token function #{inspect({m, f, length(a)})}", token)

  def fetch(%__MODULE__{source: {:system, var}} = token) do
    case System.get_env(var) do
      nil -> unavailable("the environment variable #{var} is not set")
      value -> checked(String.trim(value), "the environment variable #{var}", token)
    end
  end

  def fetch(%__MODULE__{source: {:file, path}} = token) do
    with {:ok, key} <- stat_key(path) do
      case token.file do
        {^key, secret} -> {:ok, secret.(), token}
        _ -> read_file(path, key, token)
      end
    end
  end

  @doc """
  Forgets what was read from a file, so the next `fetch/1` reads it again:
  after a 401, a rotation may have kept the file's size and time.
  """
  @spec forget(t()) :: t()
  def forget(%__MODULE__{} = token), do: %{token | file: nil}

  @doc """
  The source in words, for logs; never the token.

      iex> {:ok, t} = LibclusterDroplet.Token.new({:file, "/run/secrets/do"})
      iex> LibclusterDroplet.Token.describe(t)
      "the file /run/secrets/do"
  """
  @spec describe(t()) :: String.t()
  def describe(%__MODULE__{source: {:literal, _}}), do: "a literal string"
  def describe(%__MODULE__{source: {:function, _}}), do: "a function"
  def describe(%__MODULE__{source: {:mfa, {m, f, a}}}), do: "#{inspect(m)}.#{f}/#{length(a)}"
  def describe(%__MODULE__{source: {:system, var}}), do: "the environment variable #{var}"
  def describe(%__MODULE__{source: {:file, path}}), do: "the file #{path}"

  # Modification time, size and inode: a rotation that writes a new file or
  # rewrites this one changes at least one of them, except a same-size
  # rewrite within the same second, which the re-read after a 401 covers.
  defp stat_key(path) do
    case File.stat(path, time: :posix) do
      {:ok, %File.Stat{type: :regular} = stat} ->
        {:ok, {stat.mtime, stat.size, stat.inode, stat.major_device}}

      {:ok, %File.Stat{type: type}} ->
        unavailable("the token file #{path} is not a regular file (#{type})")

      {:error, reason} ->
        cannot_read(path, reason)
    end
  end

  defp cannot_read(path, reason),
    do: unavailable("the token file #{path} cannot be read: #{:file.format_error(reason)}")

  # A token is a few dozen bytes; anything much larger is not one.
  @max_file_bytes 64 * 1024

  defp read_file(path, key, token) do
    with {:ok, bytes} <- read_capped(path) do
      case checked(String.trim(bytes), "the token file #{path}", token) do
        {:ok, secret, token} -> {:ok, secret, %{token | file: {key, fn -> secret end}}}
        error -> error
      end
    end
  end

  defp read_capped(path) do
    case File.open(path, [:read, :binary], &IO.binread(&1, @max_file_bytes + 1)) do
      {:ok, bytes} when is_binary(bytes) and byte_size(bytes) > @max_file_bytes ->
        unavailable("the token file #{path} is larger than #{@max_file_bytes} bytes")

      {:ok, bytes} when is_binary(bytes) ->
        {:ok, bytes}

      {:ok, :eof} ->
        {:ok, ""}

      {:ok, {:error, reason}} ->
        cannot_read(path, reason)

      {:error, reason} ->
        cannot_read(path, reason)
    end
  end

  # The function's exception is named, never its message or its value: either
  # may hold the token.
  defp call(fun, what, token) do
    checked(fun.(), what, token)
  rescue
    error -> unavailable("#{what} raised #{inspect(error.__struct__)}")
  catch
    kind, _ -> unavailable("#{what} failed (#{kind})")
  end

  defp checked(value, what, token) when is_binary(value) do
    cond do
      value == "" -> unavailable("#{what} is empty")
      String.valid?(value) and printable_token?(value) -> {:ok, value, token}
      true -> unavailable("#{what} holds characters a token cannot have")
    end
  end

  defp checked(_value, what, _token), do: unavailable("#{what} did not return a string")

  # What an HTTP header can carry: printable ASCII, no spaces.
  defp printable_token?(value),
    do: value |> :binary.bin_to_list() |> Enum.all?(&(&1 in 0x21..0x7E))

  defp unavailable(detail), do: {:error, {:token_unavailable, detail}}

  defimpl Inspect do
    def inspect(token, _opts),
      do: "#LibclusterDroplet.Token<" <> LibclusterDroplet.Token.describe(token) <> ">"
  end
end
