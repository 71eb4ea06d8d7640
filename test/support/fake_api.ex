defmodule LibclusterDroplet.FakeAPI do
  @moduledoc """
  A fake of the DigitalOcean API the strategy reads, served over real HTTP/1.1
  (or HTTPS) on 127.0.0.1, for the tests, the demo and the benchmarks.

      {:ok, api} = FakeAPI.start_link(token: "test-token", droplets: [
        FakeAPI.droplet(id: 1, name: "node-1", private_ip: "127.0.0.2", tags: ["app"])
      ])
      FakeAPI.url(api)
      #=> "http://127.0.0.1:40123"

  ## Routes

  Every request needs `Authorization: Bearer <token>` (the scheme in any
  case), else it is a 401. Unknown paths are 404s. Errors have
  DigitalOcean's body, `{"id", "message", "request_id"}`.

    * `GET /v2/droplets`: `{"droplets", "links", "meta"}`. `tag_name`
      (droplets carrying it), `name` (exact, case-insensitive) and `type`
      (`droplets`, the default, lists droplets without `gpu_info`; `gpus`
      lists only those with it; anything else is a 400). `tag_name` with
      `name` or `type` is a 422.
    * `GET /v2/droplets/autoscale`: `{"autoscale_pools", "links", "meta"}`,
      `name` filters by the pool's exact name.
    * `GET /v2/droplets/autoscale/{id}`: `{"autoscale_pool": {...}}`.
    * `GET /v2/droplets/autoscale/{id}/members`: `{"droplets": [member],
      "links", "meta"}`. An unknown pool id is a 404 on both.

  Lists take `per_page` (default 20, above 200 means 200) and `page`
  (default 1); anything but a positive integer is a 400. `links.pages`
  holds absolute URLs that keep `per_page` and the filters: `first` and
  `prev` past page 1, `next` and `last` before the last page.

  ## Rate limits

  DigitalOcean's two limits for the one token: `per_hour` requests in a
  sliding window of `hour_ms` and `per_minute` in a sliding window of
  `minute_ms`. Over the hour budget: a 429 with `ratelimit-remaining: 0`.
  Over the burst: a 429 with `retry-after` (seconds until the window frees a
  slot, at least 1). Every answer has `ratelimit-limit`,
  `ratelimit-remaining` and `ratelimit-reset` (Unix seconds, rounded up,
  when the oldest counted request leaves the hour). 401s and 429s are not
  counted.

  ## Loopback only

  The server listens on 127.0.0.1, and every droplet address it is given
  must be loopback (`127.0.0.0/8` or `::1`), so a client never contacts
  another host. Wire-level faults (resets, truncation) are tested in Rust
  against `native/droplet_core/src/testserver.rs`.
  """

  use GenServer

  alias LibclusterDroplet.FakeAPI.{Answer, Droplet, HTTP}

  @typedoc "A running fake API: its pid or registered name."
  @type api :: GenServer.server()

  @typedoc "A droplet, a pool or a member as JSON decodes it: string keys."
  @type object :: %{optional(String.t()) => term}

  @typedoc """
  A fault for `inject/3`, what the client gets instead of the normal answer:

    * `{:status, code}` (400..599): that status with a DigitalOcean error
      body; a 429 also carries `retry-after: 1`. `{:status, code, message}`:
      the same with that message (a 403 naming the missing scope).
    * `{:slow, ms}`: the normal answer, `ms` milliseconds late.
    * `{:json, term}`: a 200 with `term` as JSON.
    * `{:raw, iodata}`: a 200 with exactly these bytes (HTML, broken JSON).
    * `{:edit, fun}`: the normal answer's JSON, as a map, through `fun`
      (e.g. a foreign `next` link); a `fun` of two arguments also gets the
      request's own URL. An error answer is sent as it is.
    * `{:redirect, url}`: a 302 to `url`, which is only handed out.
  """
  @type fault ::
          {:status, 400..599}
          | {:status, 400..599, String.t()}
          | {:slow, non_neg_integer}
          | {:json, term}
          | {:raw, iodata}
          | {:edit, (object -> object) | (object, String.t() -> object)}
          | {:redirect, String.t()}

  @typedoc """
  One logged request: `at_ms` (monotonic) and `unix_ms` when it was
  decided, the decoded `query` (`%{}` if it could not be), the `status`
  sent, whether the token was `authorized`, the kind of injected `fault`
  applied (`:status`, `:slow`, ...) or `nil`, and the response `headers`
  (lower-case names).
  """
  @type request :: %{
          at_ms: integer,
          unix_ms: integer,
          method: String.t(),
          path: String.t(),
          query: %{optional(String.t()) => String.t()},
          status: pos_integer,
          authorized: boolean,
          fault: atom | nil,
          headers: %{optional(String.t()) => String.t()}
        }

  @pool_config %{
    min_instances: 1,
    max_instances: 5,
    target_cpu_utilization: 0.5,
    cooldown_minutes: 10
  }
  @pool_template %{
    "size" => "s-1vcpu-1gb",
    "image" => "ubuntu-24-04-x64",
    "ssh_keys" => [],
    "vpc_uuid" => Droplet.vpc_uuid(),
    "with_droplet_agent" => true,
    "ipv6" => false
  }
  @limits [per_hour: 5000, per_minute: 250, hour_ms: 3_600_000, minute_ms: 60_000]

  # ------------------------------------------------------------------ server

  @doc """
  Starts a fake API linked to the caller, listening at once. Options:
  `:token` (the one valid token, default `"test-token"`), `:droplets`
  (default `[]`), `:tls` (HTTPS with a certificate `ca_file/1` signed,
  default `false`), `:port` (default 0, any free one), `:rate_limit`
  (`#{inspect(@limits)}`, any subset), `:keep_alive_timeout` (ms an idle
  connection is kept, default 60_000), `:name`.
  """
  @spec start_link(keyword) :: GenServer.on_start()
  def start_link(opts \\ []) do
    opts =
      Keyword.validate!(opts,
        token: "test-token",
        droplets: [],
        tls: false,
        port: 0,
        rate_limit: [],
        keep_alive_timeout: 60_000,
        name: nil
      )

    unless is_binary(opts[:token]) and opts[:token] != "",
      do: raise(ArgumentError, ":token must be a non-empty string")

    init = %{opts: opts, droplets: Enum.map(opts[:droplets], &Droplet.entry!/1)}
    init = Map.put(init, :limits, limits!(@limits, opts[:rate_limit]))
    GenServer.start_link(__MODULE__, init, if(opts[:name], do: [name: opts[:name]], else: []))
  end

  @doc "The base URL, `http://127.0.0.1:PORT` or `https://...`, no trailing slash."
  @spec url(api) :: String.t()
  def url(api), do: GenServer.call(api, :url)

  @doc "The PEM file of the CA that signed the HTTPS certificate, or `nil` without TLS."
  @spec ca_file(api) :: Path.t() | nil
  def ca_file(api), do: if(GenServer.call(api, :tls?), do: HTTP.ca_file())

  @doc "Stops the server and every connection."
  @spec stop(api) :: :ok
  def stop(api), do: GenServer.stop(api)

  @impl true
  def init(%{opts: opts} = init) do
    {:ok, sup} = Task.Supervisor.start_link()

    case HTTP.start(sup, self(), opts) do
      {:ok, url} ->
        # The listening socket and the connections' supervisor are linked
        # to this process: they close and stop with it.
        state = %{url: url, tls?: opts[:tls], token: opts[:token]}

        state =
          Map.merge(state, %{droplets: init.droplets, selected: %{}, pools: [], members: %{}})

        {:ok, Map.merge(state, %{faults: [], log: [], count: 0, limits: init.limits, hits: []})}

      {:error, reason} ->
        {:stop, reason}
    end
  end

  # -------------------------------------------------------------- droplets

  @doc "One droplet in the full shape of the API's; see `LibclusterDroplet.FakeAPI.Droplet.new/1`."
  @spec droplet(keyword) :: object
  defdelegate droplet(opts), to: Droplet, as: :new

  @doc "Replaces all droplets, in this order. Only `\"id\"` is required of each."
  @spec put_droplets(api, [object]) :: :ok
  def put_droplets(api, droplets) do
    entries = Enum.map(droplets, &Droplet.entry!/1)
    change(api, &%{&1 | droplets: entries})
  end

  @doc "Appends a droplet, or replaces the one with its id where it is."
  @spec add_droplet(api, object) :: :ok
  def add_droplet(api, droplet) do
    entry = Droplet.entry!(droplet)
    change(api, &%{&1 | droplets: keystore(&1.droplets, :id, entry)})
  end

  @doc "Removes the droplet with this id."
  @spec remove_droplet(api, term) :: :ok | {:error, :not_found}
  def remove_droplet(api, id),
    do: change(api, &with_found(&1, :droplets, :id, id, fn _ -> [] end))

  @doc "Merges a map into the droplet with this id, or maps it through a function."
  @spec update_droplet(api, term, map | (object -> object)) :: :ok | {:error, :not_found}
  def update_droplet(api, id, change) when is_map(change) or is_function(change, 1) do
    fun =
      if is_map(change),
        do: &Map.merge(&1, string_keys(change)),
        else: change

    change(api, &with_found(&1, :droplets, :id, id, fn e -> [Droplet.entry!(fun.(e.map))] end))
  end

  @doc "The current droplets, in order."
  @spec droplets(api) :: [object]
  def droplets(api), do: GenServer.call(api, :state).droplets |> Enum.map(& &1.map)

  # ------------------------------------------------------------------ pools

  @doc """
  Creates an autoscale pool and returns its id. Options: `:name`
  (required), `:id` (default a new UUID), `:tags` (the droplet template's,
  default `[]`), `:status` (`"active"`), `:region` (`"nyc3"`), `:config`
  (default 1 to 5 instances at 50% CPU), `:members` (see `put_members/3`).
  """
  @spec create_pool(api, keyword) :: String.t()
  def create_pool(api, opts) do
    defaults = [id: Answer.uuid(), tags: [], status: "active", region: "nyc3", members: []]
    opts = Keyword.validate!(opts, [:name, config: @pool_config] ++ defaults)
    unless is_binary(opts[:name]), do: raise(ArgumentError, "pool :name must be a string")
    template = %{"name" => opts[:name], "region" => opts[:region], "tags" => opts[:tags]}

    pool = %{
      "id" => opts[:id],
      "name" => opts[:name],
      "config" => opts[:config],
      "droplet_template" => Map.merge(@pool_template, template),
      "current_utilization" => %{"cpu" => 0.1, "memory" => 0.2},
      "created_at" => now(),
      "updated_at" => now(),
      "status" => opts[:status]
    }

    members = Enum.map(opts[:members], &member/1)
    pools = &keystore(&1.pools, "id", pool)

    :ok =
      change(api, &%{&1 | pools: pools.(&1), members: Map.put(&1.members, opts[:id], members)})

    opts[:id]
  end

  @doc "Merges a map into a pool: `%{name: \"renamed\"}` renames it."
  @spec update_pool(api, String.t(), map) :: :ok | {:error, :not_found}
  def update_pool(api, id, changes) when is_map(changes) do
    changes = changes |> string_keys() |> Map.put("updated_at", now())
    change(api, &with_found(&1, :pools, "id", id, fn pool -> [Map.merge(pool, changes)] end))
  end

  @doc "Deletes a pool: from now on its id is a 404."
  @spec delete_pool(api, String.t()) :: :ok | {:error, :not_found}
  def delete_pool(api, id), do: change(api, &with_found(&1, :pools, "id", id, fn _ -> [] end))

  @doc """
  Replaces a pool's members. Each is a droplet id or `{droplet_id, fields}`,
  the fields `status` (`"active"`; the API's are `provisioning`, `active`,
  `deleting`, `off`), `health_status` (`"healthy"`), `unhealthy_reason`,
  `current_utilization`.
  """
  @spec put_members(api, String.t(), [pos_integer | {pos_integer, keyword | map}]) ::
          :ok | {:error, :not_found}
  def put_members(api, id, members) do
    members = Enum.map(members, &member/1)
    change_members(api, id, fn _ -> members end)
  end

  @doc "Adds a member, or merges `fields` into the member it is: `status: \"active\"`."
  @spec put_member(api, String.t(), pos_integer, keyword | map) :: :ok | {:error, :not_found}
  def put_member(api, id, droplet_id, fields \\ []) do
    new = member({droplet_id, fields})
    changes = fields |> string_keys() |> with_reason() |> Map.put("updated_at", now())

    change_members(api, id, fn members ->
      case Enum.find(members, &(&1["droplet_id"] == droplet_id)) do
        nil -> members ++ [new]
        old -> keystore(members, "droplet_id", Map.merge(old, changes))
      end
    end)
  end

  @doc "Removes a member: its droplet left the pool."
  @spec remove_member(api, String.t(), pos_integer) :: :ok | {:error, :not_found}
  def remove_member(api, id, droplet_id) do
    change_members(api, id, fn members ->
      with ^members <- Enum.reject(members, &(&1["droplet_id"] == droplet_id)),
           do: throw(:not_found)
    end)
  end

  @doc "The pools as `GET /v2/droplets/autoscale/{id}` shows them, in order."
  @spec pools(api) :: [object]
  def pools(api) do
    state = GenServer.call(api, :state)
    Enum.map(state.pools, &Answer.render_pool(&1, state.members))
  end

  @doc "A pool's members, in order."
  @spec members(api, String.t()) :: [object]
  def members(api, id), do: Map.get(GenServer.call(api, :state).members, id, [])

  defp member({id, fields}) when is_integer(id) and id > 0 do
    %{
      "droplet_id" => id,
      "created_at" => now(),
      "updated_at" => now(),
      "health_status" => "healthy",
      "unhealthy_reason" => nil,
      "status" => "active",
      "current_utilization" => %{"cpu" => 0.1, "memory" => 0.2}
    }
    |> Map.merge(fields |> string_keys() |> with_reason())
  end

  defp member({id, _}), do: raise(ArgumentError, "not a droplet id: #{inspect(id)}")
  defp member(id), do: member({id, []})

  # DigitalOcean says why a member is unhealthy, and null when it is healthy.
  defp with_reason(%{"health_status" => health} = fields) do
    reason = if health == "healthy", do: nil, else: "Droplet failed health check"
    Map.put_new(fields, "unhealthy_reason", reason)
  end

  defp with_reason(fields), do: fields

  defp change_members(api, id, fun) do
    change(api, fn state ->
      if Enum.any?(state.pools, &(&1["id"] == id)),
        do: %{state | members: Map.put(state.members, id, fun.(Map.get(state.members, id, [])))},
        else: throw(:not_found)
    end)
  end

  # ------------------------------------------------------------ the control

  @doc """
  Queues `fault` for the next matching requests that pass authentication and
  the rate limit, matched in the order they were injected. Options: `times:`
  (a positive integer or `:infinity`, default 1), `page:` (only requests for
  this page, a request without one asking for page 1; default `:any`),
  `path:` (a path, a `Regex` or `:any`; default `"/v2/droplets"`).
  """
  @spec inject(api, fault, keyword) :: :ok
  def inject(api, fault, opts \\ []) do
    opts = Keyword.validate!(opts, times: 1, page: :any, path: "/v2/droplets")

    unless opts[:times] == :infinity or (is_integer(opts[:times]) and opts[:times] > 0),
      do: raise(ArgumentError, "times must be a positive integer or :infinity")

    unless opts[:page] == :any or (is_integer(opts[:page]) and opts[:page] > 0),
      do: raise(ArgumentError, "page must be a positive integer or :any")

    fault = Map.new(opts) |> Map.put(:fault, fault!(fault))
    change(api, &%{&1 | faults: &1.faults ++ [fault]})
  end

  defp fault!({:status, code} = f) when code in 400..599, do: f
  defp fault!({:status, code, message} = f) when code in 400..599 and is_binary(message), do: f
  defp fault!({:slow, ms} = f) when is_integer(ms) and ms >= 0, do: f
  defp fault!({:json, term}), do: {:json, Jason.encode!(term)}
  defp fault!({:raw, iodata}), do: {:raw, IO.iodata_to_binary(iodata)}
  defp fault!({:edit, fun} = f) when is_function(fun, 1) or is_function(fun, 2), do: f
  defp fault!({:redirect, url} = f) when is_binary(url), do: f
  defp fault!(f), do: raise(ArgumentError, "unknown fault: #{inspect(f)}")

  @doc "Drops every queued fault."
  @spec clear_faults(api) :: :ok
  def clear_faults(api), do: change(api, &%{&1 | faults: []})

  @doc "The logged requests, oldest first."
  @spec requests(api) :: [request]
  def requests(api), do: Enum.reverse(GenServer.call(api, :state).log)

  @doc "How many requests were logged since the start or `reset_requests/1`."
  @spec request_count(api) :: non_neg_integer
  def request_count(api), do: GenServer.call(api, :state).count

  @doc "Empties the request log (the rate limit windows are kept)."
  @spec reset_requests(api) :: :ok
  def reset_requests(api), do: change(api, &%{&1 | log: [], count: 0})

  @doc "Makes `token` the one valid token from now on: the old one gets 401s."
  @spec set_token(api, String.t()) :: :ok
  def set_token(api, token) when is_binary(token) and token != "",
    do: change(api, &%{&1 | token: token})

  @doc "Changes some rate limit settings (see `start_link/1`) and empties both windows."
  @spec set_rate_limit(api, keyword) :: :ok
  def set_rate_limit(api, opts),
    do: change(api, &%{&1 | limits: limits!(&1.limits, opts), hits: []})

  defp limits!(current, opts) do
    limits = Keyword.validate!(opts, Enum.to_list(current)) |> Map.new()

    unless Enum.all?(limits, fn {k, v} ->
             is_integer(v) and v >= if(k in [:per_hour, :per_minute], do: 0, else: 1)
           end),
           do: raise(ArgumentError, "invalid rate limit: #{inspect(opts)}")

    limits
  end

  # A change of the server's state, made inside it (so a read-modify-write
  # cannot interleave with another); what it raises is raised in the caller.
  defp change(api, fun) do
    case GenServer.call(api, {:change, fun}) do
      {:raise, exception} -> raise exception
      reply -> reply
    end
  end

  # Applies `fun` (returning the replacement list) to the item of `key` with
  # this `id` in the list `field`; `{:error, :not_found}` when there is none.
  defp with_found(state, field, key, id, fun) do
    items = Map.fetch!(state, field)

    case Enum.split_while(items, &(Map.get(&1, key) != id)) do
      {_, []} -> throw(:not_found)
      {before, [item | later]} -> Map.put(state, field, before ++ fun.(item) ++ later)
    end
  end

  defp now, do: DateTime.utc_now() |> DateTime.truncate(:second) |> DateTime.to_iso8601()

  defp string_keys(pairs), do: Map.new(pairs, fn {k, v} -> {"#{k}", v} end)

  defp keystore(items, key, item) do
    if Enum.any?(items, &(Map.get(&1, key) == Map.get(item, key))),
      do: Enum.map(items, &if(Map.get(&1, key) == Map.get(item, key), do: item, else: &1)),
      else: items ++ [item]
  end

  @impl true
  def handle_call({:change, fun}, _from, state) do
    new = fun.(state)
    # (=== is immediate when the list is the same term.)
    {:reply, :ok, if(new.droplets === state.droplets, do: new, else: %{new | selected: %{}})}
  rescue
    exception -> {:reply, {:raise, exception}, state}
  catch
    :not_found -> {:reply, {:error, :not_found}, state}
  end

  def handle_call(:state, _from, state), do: {:reply, state, state}
  def handle_call(:url, _from, state), do: {:reply, state.url, state}
  def handle_call(:tls?, _from, state), do: {:reply, state.tls?, state}

  def handle_call({:request, req}, _from, state) do
    {answer, state} = Answer.decide(req, state)
    {:reply, answer, state}
  end
end
