defmodule LibclusterDroplet.Error do
  @moduledoc """
  Readable messages for the `{:error, reason}` terms of `LibclusterDroplet`.

  The NIF reports failures as plain terms so callers can match on them:

  | reason | meaning |
  | --- | --- |
  | `:unauthorized` | 401: the token is wrong or revoked |
  | `:forbidden` | 403: the token lacks the `droplet:read` (or `tag:read`) scope |
  | `{:forbidden, scope}` | 403 whose message names the missing scope, e.g. `"tag:read"`: only a word of the shape `resource:read\\|create\\|update\\|delete` is ever kept from it |
  | `{:rate_limited, seconds \\| nil}` | 429: wait `seconds` before the next request |
  | `{:http_status, code}` | any other non-2xx status |
  | `:timeout` | connect, request or whole-listing deadline passed |
  | `{:transport, detail}` | connection refused, reset, DNS failure… |
  | `{:tls, detail}` | the server's certificate was not trusted |
  | `{:invalid_json, detail}` | the body is not JSON (HTML, truncated…) |
  | `{:unexpected_shape, detail}` | JSON, but not a droplets page |
  | `{:inconsistent, detail}` | pages contradict each other or `meta.total`: a page lists more droplets than `per_page`, or `meta.total` changed during the listing twice in a row |
  | `:foreign_link` | a pagination link points at another scheme, host or port |
  | `:foreign_redirect` | a redirect points at another scheme, host or port |
  | `:too_many_redirects` | more than 3 redirects |
  | `:pagination_loop` | a `next` link revisits a page |
  | `{:too_many_pages, max}` | more pages than the cap |
  | `{:too_many_droplets, max}` | more droplets than the cap (`:max_droplets`) |
  | `{:body_too_large, limit}` | a response body over the size cap (`:max_body_bytes`) |
  | `{:listing_too_large, {bound, limit}}` | the listing went past one of its bounds, named as the option that sets it: `:max_listing_bytes` (what the whole listing keeps), `:max_string_bytes` (one name, tag, slug, status, VPC id or address), `:max_tags_per_droplet` or `:max_addresses_per_droplet`; it stopped there, before building anything past it |
  | `{:ca_file, detail}` | the CA file could not be read (not a regular file, over 1 MiB…) or parsed |
  | `:no_private_ipv6` | `network: :private` with `ipv6: true`: DigitalOcean has no private IPv6 |
  | `:tags_unknown` | `gpus: true` or `:only` with `tag_name`: the GPU listing's tags are checked by the client, and a droplet came without its `tags` (the token lacks `tag:read`) |
  | `{:vpc_unknown, detail}` | the strategy's `vpc` option could not be applied: droplets came without `vpc_uuid` (the token lacks `vpc:read`), or, with `vpc: :self`, this node's droplet is not among the listed ones |
  | `{:invalid_request, detail}` | the arguments given to the NIF were malformed |
  | `{:spawn, detail}` | the NIF could not start its worker thread |
  | `{:panic, detail}` | a bug in the NIF, caught before it could reach the VM |
  | `{:token_unavailable, detail}` | the token could not be read from its source (see `LibclusterDroplet.Token`) |
  | `:busy` | 64 NIF calls were already in flight in this VM; nothing was started |
  | `:cancelled` | the call was cancelled (`LibclusterDroplet.cancel/1`) or its caller dropped it |
  | `:pool_not_found` | the `:autoscale_pool` asked for does not exist (its name or UUID is wrong, or it was deleted) |
  | `{:token_in_option, option}` | an option's value holds the token, or a piece of it (the strategy checks its options each time it reads the token) |

  No reason and no message ever contains the API token.
  """

  defexception [:reason]

  @type reason ::
          :unauthorized
          | :forbidden
          | {:forbidden, String.t()}
          | {:rate_limited, non_neg_integer() | nil}
          | {:http_status, pos_integer()}
          | :timeout
          | {:transport, String.t()}
          | {:tls, String.t()}
          | {:invalid_json, String.t()}
          | {:unexpected_shape, String.t()}
          | {:inconsistent, String.t()}
          | :foreign_link
          | :foreign_redirect
          | :too_many_redirects
          | :pagination_loop
          | {:too_many_pages, pos_integer()}
          | {:too_many_droplets, pos_integer()}
          | {:body_too_large, pos_integer()}
          | {:listing_too_large,
             {:max_listing_bytes
              | :max_string_bytes
              | :max_tags_per_droplet
              | :max_addresses_per_droplet, pos_integer()}}
          | {:ca_file, String.t()}
          | :no_private_ipv6
          | :tags_unknown
          | {:vpc_unknown, String.t()}
          | {:invalid_request, String.t()}
          | {:spawn, String.t()}
          | {:panic, String.t()}
          | {:token_unavailable, String.t()}
          | :busy
          | :cancelled
          | {:token_in_option, atom()}
          | :pool_not_found

  @type t :: %__MODULE__{reason: reason() | term()}

  @impl true
  def message(%__MODULE__{reason: reason}), do: format(reason)

  @doc """
  The class of an error: the atom that names it in logs and telemetry.

      iex> LibclusterDroplet.Error.class({:rate_limited, 30})
      :rate_limited
      iex> LibclusterDroplet.Error.class(:timeout)
      :timeout
      iex> LibclusterDroplet.Error.class({:listing_too_large, {:max_listing_bytes, 33_554_432}})
      :listing_too_large
  """
  @spec class(term()) :: atom()
  def class(reason) when is_atom(reason), do: reason
  def class({class, _}) when is_atom(class), do: class
  def class(_), do: :unknown

  @doc """
  A one-line, human-readable description of `reason`.

      iex> LibclusterDroplet.Error.format({:http_status, 503})
      "the DigitalOcean API answered HTTP 503"
      iex> LibclusterDroplet.Error.format({:too_many_droplets, 10_000})
      "the listing has more than 10000 droplets (raise :max_droplets if that is expected)"
      iex> LibclusterDroplet.Error.format({:listing_too_large, {:max_tags_per_droplet, 1_000}})
      "the listing went past :max_tags_per_droplet (1000): a droplet carries more tags than that (raise :max_tags_per_droplet if that is expected)"
  """
  @spec format(term()) :: String.t()
  def format(:unauthorized),
    do: "the DigitalOcean API rejected the token (401 Unauthorized): is it valid and not revoked?"

  def format(:forbidden),
    do:
      "the DigitalOcean API refused the request (403 Forbidden): the token needs the droplet:read scope (and tag:read to filter by tag)"

  def format({:forbidden, scope}),
    do:
      "the DigitalOcean API refused the request (403 Forbidden): the token lacks the #{scope} scope"

  def format({:rate_limited, nil}), do: "the DigitalOcean API rate limit was hit (429)"

  def format({:rate_limited, seconds}),
    do: "the DigitalOcean API rate limit was hit (429); retry allowed in #{seconds} s"

  def format({:http_status, code}), do: "the DigitalOcean API answered HTTP #{code}"
  def format(:timeout), do: "the DigitalOcean API did not answer in time"
  def format({:transport, detail}), do: "could not reach the DigitalOcean API: #{detail}"

  def format({:tls, detail}),
    do:
      "TLS verification of the DigitalOcean API failed: #{detail} (use :ca_file to trust a private CA)"

  def format({:invalid_json, detail}),
    do: "the DigitalOcean API sent a body that is not valid JSON: #{detail}"

  def format({:unexpected_shape, detail}),
    do: "the DigitalOcean API sent JSON that is not a droplets page: #{detail}"

  def format({:inconsistent, detail}),
    do: "the DigitalOcean API sent inconsistent pages: #{detail}"

  def format(:foreign_link),
    do:
      "a pagination link pointed at another scheme, host or port than api_url; it was not followed"

  def format(:foreign_redirect),
    do:
      "the DigitalOcean API redirected to another scheme, host or port than api_url; it was not followed"

  def format(:too_many_redirects), do: "the DigitalOcean API redirected too many times"

  def format(:pagination_loop),
    do: "the DigitalOcean API's next links loop back to a page already fetched"

  def format({:too_many_pages, max}), do: "the listing has more than #{max} pages"

  def format({:too_many_droplets, max}),
    do: "the listing has more than #{max} droplets (raise :max_droplets if that is expected)"

  def format({:body_too_large, limit}),
    do:
      "a response body exceeded the #{limit}-byte cap (raise :max_body_bytes if that is expected)"

  def format({:listing_too_large, {bound, limit}}),
    do:
      "the listing went past #{inspect(bound)} (#{limit}): " <>
        "#{bound_meaning(bound)} (raise #{inspect(bound)} if that is expected)"

  def format({:ca_file, detail}), do: "the CA file could not be used: #{detail}"

  def format(:no_private_ipv6),
    do: "network: :private with ipv6: true selects nothing: DigitalOcean has no private IPv6"

  def format(:tags_unknown),
    do:
      "GPU droplets were listed without their tags, so tag_name cannot be checked on them: " <>
        "the token needs the tag:read scope"

  def format({:vpc_unknown, detail}),
    do:
      "the vpc option cannot be applied: #{detail} (it needs the token's vpc:read scope, " <>
        "and vpc: :self needs this node's droplet among the listed ones)"

  def format({:invalid_request, detail}), do: "invalid request: #{detail}"
  def format({:spawn, detail}), do: "the NIF could not start a thread: #{detail}"
  def format({:panic, detail}), do: "the NIF hit a bug and recovered: #{detail}"

  def format({:token_unavailable, detail}),
    do: "the DigitalOcean API token could not be read: #{detail}"

  def format(:busy),
    do:
      "the NIF already has 64 calls in flight in this VM, its limit; nothing was started: retry later"

  def format(:cancelled), do: "the call was cancelled before it finished"

  def format(:pool_not_found),
    do: "no autoscale pool has that name or id (or the token cannot see it)"

  def format({:token_in_option, option}),
    do:
      "the option #{inspect(option)} holds (part of) the API token; fix the topology's config " <>
        "(the value is not shown)"

  # Only the class: an unknown term may hold anything, the token included.
  def format(other), do: "unexpected error (#{class(other)})"

  defp bound_meaning(:max_listing_bytes), do: "the droplets listed hold more than that, in bytes"
  defp bound_meaning(:max_string_bytes), do: "a droplet holds a string longer than that, in bytes"
  defp bound_meaning(:max_tags_per_droplet), do: "a droplet carries more tags than that"

  defp bound_meaning(:max_addresses_per_droplet),
    do: "a droplet has more network addresses than that"

  defp bound_meaning(_other), do: "a bound of the listing"
end
