defmodule LibclusterDroplet.FakeAPI.Droplet do
  @moduledoc """
  Droplets for the fake API, in the full JSON shape of DigitalOcean's
  example response (`../shared/digitalocean-api/list_droplets_all.json`).
  """

  @template_path Path.expand(
                   "../../../../shared/digitalocean-api/list_droplets_all.json",
                   __DIR__
                 )
  @external_resource @template_path
  @template @template_path |> File.read!() |> Jason.decode!() |> Map.fetch!("droplets") |> hd()
  @gpu_info %{"count" => 1, "vram" => %{"amount" => 80, "unit" => "gib"}, "model" => "h100"}

  @doc "The VPC of the example droplet, every droplet's by default."
  def vpc_uuid, do: @template["vpc_uuid"]

  @doc """
  One droplet in the full shape of DigitalOcean's example response. Options:
  `:id` and `:name` (required), `:status` (`"active"`), `:tags` (`[]`;
  `nil` leaves the field out, as for a token without `tag:read`), `:region`
  (`"nyc3"`), `:gpu` (`false`; `true` adds `gpu_info`), `:size_slug`,
  `:vpc_uuid` (the example's; `nil` leaves it out, as without `vpc:read`),
  `:private_ip` (by default `127.x.y.z` derived from the id; `nil` for
  none), `:public_ip` and `:ipv6` (default none). Addresses must be
  loopback.

      iex> d = LibclusterDroplet.FakeAPI.Droplet.new(id: 7, name: "n7", private_ip: "127.0.0.7")
      iex> {d["id"], d["status"], d["region"]["slug"], d["networks"]["v4"]}
      {7, "active", "nyc3",
       [%{"gateway" => "nil", "ip_address" => "127.0.0.7", "netmask" => "255.0.0.0", "type" => "private"}]}
  """
  @spec new(keyword) :: map
  def new(opts) do
    opts =
      Keyword.validate!(
        opts,
        [:id, :name, :size_slug, :public_ip, :ipv6] ++
          [status: "active", tags: [], region: "nyc3", gpu: false] ++
          [vpc_uuid: @template["vpc_uuid"], private_ip: :derived]
      )

    id = opts[:id]
    unless is_integer(id) and id > 0, do: raise(ArgumentError, "droplet :id must be positive")
    unless is_binary(opts[:name]), do: raise(ArgumentError, "droplet :name must be a string")
    size = opts[:size_slug] || if(opts[:gpu], do: "gpu-h100x1-80gb", else: "s-1vcpu-1gb")
    private = if opts[:private_ip] == :derived, do: derived_ip(id), else: opts[:private_ip]

    v4 =
      for {ip, type, gateway} <- [
            {private, "private", "nil"},
            {opts[:public_ip], "public", "127.0.0.1"}
          ],
          ip != nil,
          do: %{
            "ip_address" => ip,
            "netmask" => "255.0.0.0",
            "gateway" => gateway,
            "type" => type
          }

    v6 =
      for ip <- [opts[:ipv6]],
          ip != nil,
          do: %{"ip_address" => ip, "netmask" => 128, "gateway" => "::1", "type" => "public"}

    features = ["backups"] ++ if(private, do: ["private_networking"], else: [])

    %{
      @template
      | "id" => id,
        "name" => opts[:name],
        "status" => opts[:status],
        "tags" => opts[:tags],
        "region" => %{@template["region"] | "slug" => opts[:region], "name" => opts[:region]},
        "size_slug" => size,
        "size" => %{@template["size"] | "slug" => size},
        "vpc_uuid" => opts[:vpc_uuid],
        "networks" => %{"v4" => v4, "v6" => v6},
        "features" => features ++ if(opts[:ipv6], do: ["ipv6"], else: [])
    }
    |> Map.merge(if opts[:gpu], do: %{"gpu_info" => @gpu_info}, else: %{})
    |> Map.reject(fn {key, value} -> key in ["tags", "vpc_uuid"] and value == nil end)
    |> tap(&loopback!/1)
  end

  defp derived_ip(id) do
    n = rem(id, 254 * 256 * 256)
    "127.#{div(n, 254 * 256)}.#{rem(div(n, 254), 256)}.#{rem(n, 254) + 1}"
  end

  # What the server keeps of a droplet: the map, its JSON (encoded once, so
  # a page is assembled from cached binaries) and what the filters read.
  @doc false
  def entry!(%{"id" => id} = droplet) do
    loopback!(droplet)
    name = droplet["name"]

    %{
      id: id,
      map: droplet,
      json: Jason.Fragment.new(Jason.encode!(droplet)),
      name: if(is_binary(name), do: String.downcase(name)),
      tags: if(is_list(droplet["tags"]), do: droplet["tags"], else: []),
      gpu?: is_map(droplet["gpu_info"])
    }
  end

  def entry!(other), do: raise(ArgumentError, "not a droplet with an id: #{inspect(other)}")

  defp loopback!(%{} = droplet) do
    for family <- ["v4", "v6"],
        %{"ip_address" => ip} <- get_in(droplet, ["networks", family]) || [],
        do: loopback!(ip)
  end

  defp loopback!(ip) do
    case :inet.parse_strict_address(String.to_charlist("#{ip}")) do
      {:ok, {127, _, _, _}} -> :ok
      {:ok, {0, 0, 0, 0, 0, 0, 0, 1}} -> :ok
      _ -> raise ArgumentError, "#{inspect(ip)} is not a loopback address"
    end
  end
end
