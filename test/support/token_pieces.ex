defmodule LibclusterDroplet.TokenPieces do
  @moduledoc false
  # The hostile search of the guide: no piece of 12 characters or more of
  # the token may appear in an output, and every such piece holds one of
  # the token's 12-character windows. A failure names the window's
  # position, never the token or the text (which would hold it).

  import ExUnit.Assertions

  @window 12

  @doc "Fails when `text` (any term is inspected in full) holds a window of `token`."
  def assert_no_piece(text, token) when is_binary(token) and token != "" do
    text =
      if is_binary(text),
        do: text,
        else: inspect(text, limit: :infinity, printable_limit: :infinity)

    size = min(@window, byte_size(token))

    for at <- 0..(byte_size(token) - size),
        String.contains?(text, binary_part(token, at, size)) do
      flunk("the text holds the token's #{size}-character window at position #{at}")
    end

    :ok
  end
end
