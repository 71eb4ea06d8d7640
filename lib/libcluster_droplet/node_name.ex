defmodule LibclusterDroplet.NodeName do
  @moduledoc false
  # Node names `basename@address`. Erlang refuses a node whose part before
  # `@` holds anything but ASCII letters, digits, `_` and `-`, so a droplet
  # whose name cannot be a basename is skipped (or named with :node_basename).

  @basename ~r/\A[A-Za-z0-9_-]{1,200}\z/

  @doc """
  Whether `basename` can stand before the `@` of a node name.

      iex> LibclusterDroplet.NodeName.valid_basename?("web-1")
      true
      iex> LibclusterDroplet.NodeName.valid_basename?("example.com")
      false
  """
  @spec valid_basename?(term()) :: boolean()
  def valid_basename?(basename) when is_binary(basename), do: Regex.match?(@basename, basename)
  def valid_basename?(_), do: false

  @doc """
  The node name of `basename` at `address` (an IPv4 or IPv6 literal).

      iex> LibclusterDroplet.NodeName.build("web", "10.0.0.2")
      {:ok, :"web@10.0.0.2"}
      iex> LibclusterDroplet.NodeName.build("web", "2604:a880::1")
      {:ok, :"web@2604:a880::1"}
      iex> LibclusterDroplet.NodeName.build("my app", "10.0.0.2")
      {:error, :invalid_basename}
  """
  @spec build(String.t(), String.t()) ::
          {:ok, node()} | {:error, :invalid_basename | :invalid_address}
  def build(basename, address) when is_binary(basename) and is_binary(address) do
    cond do
      not valid_basename?(basename) ->
        {:error, :invalid_basename}

      not match?({:ok, _}, :inet.parse_strict_address(String.to_charlist(address))) ->
        {:error, :invalid_address}

      true ->
        # Atoms are made only here, for names that passed both checks, so
        # the atom table grows only with genuinely new droplets.
        {:ok, String.to_atom(basename <> "@" <> address)}
    end
  end

  @doc """
  The host part of a node name, `""` for a name without one.

      iex> LibclusterDroplet.NodeName.host(:"app@10.0.0.2")
      "10.0.0.2"
  """
  @spec host(node()) :: String.t()
  def host(node) do
    case node |> Atom.to_string() |> String.split("@", parts: 2) do
      [_name, host] -> host
      [_no_host] -> ""
    end
  end
end
