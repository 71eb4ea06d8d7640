defmodule LibclusterDroplet.Redact do
  @moduledoc false
  # The token's pieces. No substring of @window characters or more of the
  # token may appear in anything this library prints or hands out: every
  # such substring contains one of the token's @window-character windows,
  # so looking for those windows finds every piece. A token shorter than
  # that is one piece. :binary.match/2 with a compiled pattern searches for
  # all the windows at once, in time linear in the text.

  @window 12
  @min_secret 4
  @token_shape ~r/do[opr]_v1_[0-9a-f]{64}/i

  def window, do: @window

  # The compiled pattern of a secret's pieces, or nil for a secret too
  # short to look for without matching ordinary words.
  @spec pieces(String.t()) :: :binary.cp() | nil
  def pieces(secret) when is_binary(secret) and byte_size(secret) < @min_secret, do: nil

  def pieces(secret) when is_binary(secret) and byte_size(secret) <= @window,
    do: :binary.compile_pattern([secret])

  def pieces(secret) when is_binary(secret) do
    windows = for at <- 0..(byte_size(secret) - @window), do: binary_part(secret, at, @window)
    :binary.compile_pattern(Enum.uniq(windows))
  end

  @spec holds?(String.t(), :binary.cp() | nil) :: boolean()
  def holds?(_text, nil), do: false
  def holds?(text, pieces) when is_binary(text), do: :binary.match(text, pieces) != :nomatch

  # Whether `text` holds something shaped like a DigitalOcean token.
  def token_shaped?(text) when is_binary(text), do: Regex.match?(@token_shape, text)
end
