defmodule LibclusterDroplet.FakeAPI.JSON do
  @moduledoc """
  A small, strict JSON (RFC 8259) encoder and decoder.

  The project has no Hex dependencies, so the fake DigitalOcean API and its
  tests use this module instead of Jason.

  ## Decoding

    * objects become maps with string keys (a repeated key keeps its last
      value), arrays become lists, `null`/`true`/`false` become
      `nil`/`true`/`false`;
    * numbers without a fraction or exponent become integers (of any size),
      the others become floats (`1E2` is `100.0`);
    * strings must be valid UTF-8 without raw control characters; every
      escape of the RFC is understood, including surrogate pairs such as
      `"\\ud83d\\ude00"`. A lone surrogate is an error;
    * whitespace is the RFC's four characters only; anything after the value
      is an error.

  Errors are `{:error, {reason, byte_offset}}`.

  ## Encoding

  `nil`, booleans, numbers, binaries (which must be valid UTF-8), other atoms
  (as strings), lists and maps (keys: binaries, atoms or numbers). The output
  has no insignificant whitespace. Anything else, such as a tuple or a
  non-UTF-8 binary, raises `ArgumentError`.
  """

  @typedoc "A term this module produces when decoding."
  @type json ::
          nil
          | boolean
          | number
          | String.t()
          | [json]
          | %{optional(String.t()) => json}

  @typedoc "Why and where (byte offset in the input) decoding failed."
  @type decode_error ::
          {:unexpected_end
           | :unexpected_byte
           | :invalid_escape
           | :lone_surrogate
           | :invalid_utf8
           | :control_character
           | :invalid_number
           | :number_out_of_range
           | :trailing_data, non_neg_integer}

  # ---------------------------------------------------------------- encoding

  @doc """
  Encodes `term` as a JSON binary, raising `ArgumentError` when the term has
  no JSON form.

      iex> LibclusterDroplet.FakeAPI.JSON.encode!(%{"a" => [1, 2.5, nil, "é\\n"]})
      ~s({"a":[1,2.5,null,"é\\\\n"]})
  """
  @spec encode!(term) :: binary
  def encode!(term), do: term |> encode_to_iodata!() |> IO.iodata_to_binary()

  @doc """
  Like `encode!/1` but returns `{:ok, binary}` or `{:error, %ArgumentError{}}`.
  """
  @spec encode(term) :: {:ok, binary} | {:error, ArgumentError.t()}
  def encode(term) do
    {:ok, encode!(term)}
  rescue
    e in ArgumentError -> {:error, e}
  end

  @doc """
  Encodes `term` as iodata, which is cheaper than `encode!/1` when the result
  is written to a socket or concatenated with other JSON.
  """
  @spec encode_to_iodata!(term) :: iodata
  def encode_to_iodata!(term), do: value(term)

  defp value(nil), do: "null"
  defp value(true), do: "true"
  defp value(false), do: "false"
  defp value(v) when is_atom(v), do: string(Atom.to_string(v))
  defp value(v) when is_binary(v), do: string(v)
  defp value(v) when is_integer(v), do: Integer.to_string(v)
  # `:short` gives the shortest text that reads back as the same float, and
  # always with a `.` or an exponent, so a float stays a float on decoding.
  defp value(v) when is_float(v), do: :erlang.float_to_binary(v, [:short])
  defp value([]), do: "[]"
  defp value(list) when is_list(list), do: [?[, array_items(list), ?]]

  defp value(map) when is_map(map) and not is_struct(map) do
    case Map.to_list(map) do
      [] -> "{}"
      [pair | pairs] -> [?{, pair(pair), Enum.map(pairs, &[?, | pair(&1)]), ?}]
    end
  end

  defp value(other), do: raise(ArgumentError, "no JSON form for #{inspect(other)}")

  defp array_items([last]), do: [value(last)]
  defp array_items([item | rest]) when is_list(rest), do: [value(item), ?, | array_items(rest)]

  defp array_items(improper),
    do: raise(ArgumentError, "no JSON form for the improper list tail #{inspect(improper)}")

  defp pair({key, v}), do: [key(key), ?: | value(v)]

  defp key(k) when is_binary(k), do: string(k)
  defp key(k) when is_atom(k) and k not in [nil, true, false], do: string(Atom.to_string(k))
  defp key(k) when is_number(k), do: [?", value(k), ?"]
  defp key(k), do: raise(ArgumentError, "no JSON object key form for #{inspect(k)}")

  defp string(s), do: [?", escape(s, s, 0, 0, []), ?"]

  # Walks the string once, remembering where the current run of bytes that
  # need no escaping starts (`from`) and how long it is (`len`), so plain runs
  # are emitted as sub-binaries instead of byte by byte.
  defp escape(<<>>, s, from, len, acc), do: [acc | run(s, from, len)]

  defp escape(<<c, rest::binary>>, s, from, len, acc) when c in [?", ?\\] or c < 0x20 do
    acc = [acc, run(s, from, len) | escape_char(c)]
    escape(rest, s, from + len + 1, 0, acc)
  end

  defp escape(<<c, rest::binary>>, s, from, len, acc) when c < 0x80,
    do: escape(rest, s, from, len + 1, acc)

  defp escape(<<c::utf8, rest::binary>>, s, from, len, acc),
    do: escape(rest, s, from, len + utf8_size(c), acc)

  defp escape(_invalid, s, _from, _len, _acc),
    do: raise(ArgumentError, "not a valid UTF-8 string: #{inspect(s)}")

  defp run(_s, _from, 0), do: []
  defp run(s, from, len), do: binary_part(s, from, len)

  defp utf8_size(c) when c < 0x800, do: 2
  defp utf8_size(c) when c < 0x10000, do: 3
  defp utf8_size(_), do: 4

  defp escape_char(?"), do: "\\\""
  defp escape_char(?\\), do: "\\\\"
  defp escape_char(?\n), do: "\\n"
  defp escape_char(?\r), do: "\\r"
  defp escape_char(?\t), do: "\\t"
  defp escape_char(?\b), do: "\\b"
  defp escape_char(?\f), do: "\\f"

  defp escape_char(c) do
    hex = Integer.to_string(c, 16)
    ["\\u", String.duplicate("0", 4 - byte_size(hex)), hex]
  end

  # ---------------------------------------------------------------- decoding

  @doc """
  Decodes a JSON text.

      iex> LibclusterDroplet.FakeAPI.JSON.decode(~s({"a": [1, 2.5e0, "\\\\u00e9"]}))
      {:ok, %{"a" => [1, 2.5, "é"]}}

      iex> LibclusterDroplet.FakeAPI.JSON.decode("[1,]")
      {:error, {:unexpected_byte, 3}}
  """
  @spec decode(binary) :: {:ok, json} | {:error, decode_error}
  def decode(input) when is_binary(input) do
    {v, rest} = input |> skip_ws() |> parse_value()

    case skip_ws(rest) do
      <<>> -> {:ok, v}
      trailing -> {:error, {:trailing_data, byte_size(input) - byte_size(trailing)}}
    end
  catch
    {:json_error, reason, rest} -> {:error, {reason, byte_size(input) - byte_size(rest)}}
  end

  @doc """
  Like `decode/1` but raises `ArgumentError` on invalid input.
  """
  @spec decode!(binary) :: json
  def decode!(input) do
    case decode(input) do
      {:ok, v} -> v
      {:error, {reason, at}} -> raise ArgumentError, "invalid JSON (#{reason}) at byte #{at}"
    end
  end

  defp fail(reason, rest), do: throw({:json_error, reason, rest})

  defp skip_ws(<<c, rest::binary>>) when c in [?\s, ?\t, ?\n, ?\r], do: skip_ws(rest)
  defp skip_ws(bin), do: bin

  defp parse_value(<<?{, rest::binary>>), do: object(skip_ws(rest))
  defp parse_value(<<?[, rest::binary>>), do: array(skip_ws(rest))
  defp parse_value(<<?", rest::binary>>), do: chars(rest, rest, 0, [])
  defp parse_value(<<"true", rest::binary>>), do: {true, rest}
  defp parse_value(<<"false", rest::binary>>), do: {false, rest}
  defp parse_value(<<"null", rest::binary>>), do: {nil, rest}
  defp parse_value(<<c, _::binary>> = bin) when c == ?- or c in ?0..?9, do: number(bin)
  defp parse_value(<<>>), do: fail(:unexpected_end, <<>>)
  defp parse_value(bin), do: fail(:unexpected_byte, bin)

  defp object(<<?}, rest::binary>>), do: {%{}, rest}
  defp object(bin), do: members(bin, [])

  defp members(<<?", rest::binary>>, acc) do
    {key, rest} = chars(rest, rest, 0, [])

    case skip_ws(rest) do
      <<?:, rest::binary>> ->
        {v, rest} = rest |> skip_ws() |> parse_value()
        acc = [{key, v} | acc]

        case skip_ws(rest) do
          <<?,, rest::binary>> -> members(skip_ws(rest), acc)
          # :maps.from_list keeps the last of repeated keys; reversing first
          # makes that the one written last in the text.
          <<?}, rest::binary>> -> {:maps.from_list(:lists.reverse(acc)), rest}
          other -> unexpected(other)
        end

      other ->
        unexpected(other)
    end
  end

  defp members(other, _acc), do: unexpected(other)

  defp array(<<?], rest::binary>>), do: {[], rest}
  defp array(bin), do: elements(bin, [])

  defp elements(bin, acc) do
    {v, rest} = parse_value(bin)

    case skip_ws(rest) do
      <<?,, rest::binary>> -> elements(skip_ws(rest), [v | acc])
      <<?], rest::binary>> -> {:lists.reverse(acc, [v]), rest}
      other -> unexpected(other)
    end
  end

  defp unexpected(<<>>), do: fail(:unexpected_end, <<>>)
  defp unexpected(bin), do: fail(:unexpected_byte, bin)

  # `run` is the input where the current unescaped run began and `len` its
  # length so far: plain runs are taken as one sub-binary.
  defp chars(<<?", rest::binary>>, run, len, acc),
    do: {finish_string(acc, binary_part(run, 0, len)), rest}

  defp chars(<<?\\, rest::binary>> = at, run, len, acc) do
    {piece, rest} = unescape(rest, at)
    chars(rest, rest, 0, [acc, binary_part(run, 0, len) | piece])
  end

  defp chars(<<c, rest::binary>>, run, len, acc) when c >= 0x20 and c < 0x80,
    do: chars(rest, run, len + 1, acc)

  defp chars(<<c, _::binary>> = bin, _run, _len, _acc) when c < 0x20,
    do: fail(:control_character, bin)

  defp chars(<<c::utf8, rest::binary>>, run, len, acc),
    do: chars(rest, run, len + utf8_size(c), acc)

  defp chars(<<>>, _run, _len, _acc), do: fail(:unexpected_end, <<>>)
  defp chars(bin, _run, _len, _acc), do: fail(:invalid_utf8, bin)

  defp finish_string([], last), do: last
  defp finish_string(acc, last), do: IO.iodata_to_binary([acc | last])

  defp unescape(<<?", rest::binary>>, _at), do: {"\"", rest}
  defp unescape(<<?\\, rest::binary>>, _at), do: {"\\", rest}
  defp unescape(<<?/, rest::binary>>, _at), do: {"/", rest}
  defp unescape(<<?b, rest::binary>>, _at), do: {"\b", rest}
  defp unescape(<<?f, rest::binary>>, _at), do: {"\f", rest}
  defp unescape(<<?n, rest::binary>>, _at), do: {"\n", rest}
  defp unescape(<<?r, rest::binary>>, _at), do: {"\r", rest}
  defp unescape(<<?t, rest::binary>>, _at), do: {"\t", rest}

  defp unescape(<<?u, hex::binary-size(4), rest::binary>>, at) do
    case hex4(hex, at) do
      high when high in 0xD800..0xDBFF ->
        case rest do
          <<"\\u", hex2::binary-size(4), rest2::binary>> ->
            case hex4(hex2, rest) do
              low when low in 0xDC00..0xDFFF ->
                cp = 0x10000 + Bitwise.bsl(high - 0xD800, 10) + (low - 0xDC00)
                {<<cp::utf8>>, rest2}

              _ ->
                fail(:lone_surrogate, at)
            end

          _ ->
            fail(:lone_surrogate, at)
        end

      low when low in 0xDC00..0xDFFF ->
        fail(:lone_surrogate, at)

      cp ->
        {<<cp::utf8>>, rest}
    end
  end

  defp unescape(<<>>, _at), do: fail(:unexpected_end, <<>>)
  defp unescape(_, at), do: fail(:invalid_escape, at)

  defp hex4(hex, at) do
    if hex =~ ~r/\A[0-9a-fA-F]{4}\z/,
      do: String.to_integer(hex, 16),
      else: fail(:invalid_escape, at)
  end

  # RFC 8259 grammar: -? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?
  defp number(bin) do
    len = if match?(<<?-, _::binary>>, bin), do: 1, else: 0

    len =
      case bin do
        <<_::binary-size(len), ?0, _::binary>> -> len + 1
        <<_::binary-size(len), c, _::binary>> when c in ?1..?9 -> digits(bin, len + 1)
        _ -> fail(:invalid_number, bin)
      end

    {len, float?} =
      case bin do
        <<_::binary-size(len), ?., c, _::binary>> when c in ?0..?9 -> {digits(bin, len + 2), true}
        <<_::binary-size(len), ?., _::binary>> -> fail(:invalid_number, bin)
        _ -> {len, false}
      end

    {len, exp?} =
      case bin do
        <<_::binary-size(len), e, sign, c, _::binary>>
        when e in [?e, ?E] and sign in [?+, ?-] and c in ?0..?9 ->
          {digits(bin, len + 3), true}

        <<_::binary-size(len), e, c, _::binary>> when e in [?e, ?E] and c in ?0..?9 ->
          {digits(bin, len + 2), true}

        <<_::binary-size(len), e, _::binary>> when e in [?e, ?E] ->
          fail(:invalid_number, bin)

        _ ->
          {len, false}
      end

    <<text::binary-size(len), rest::binary>> = bin
    {to_number(text, float?, exp?, bin), rest}
  end

  defp digits(bin, len) do
    case bin do
      <<_::binary-size(len), c, _::binary>> when c in ?0..?9 -> digits(bin, len + 1)
      _ -> len
    end
  end

  defp to_number(text, false, false, _bin), do: String.to_integer(text)

  defp to_number(text, float?, _exp?, bin) do
    # Erlang's float syntax wants a fraction before the exponent ("1.0e5").
    text =
      if float?,
        do: text,
        else: String.replace(text, ~r/[eE]/, ".0e", global: false)

    :erlang.binary_to_float(text)
  rescue
    ArgumentError -> fail(:number_out_of_range, bin)
  end
end
