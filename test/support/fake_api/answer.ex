defmodule LibclusterDroplet.FakeAPI.Answer do
  @moduledoc false
  # What the fake API answers, as pure functions of its state (a plain map,
  # see FakeAPI.init/1): authentication, DigitalOcean's two rate limits,
  # injected faults, the routes and their paging. The answer is
  # `%{status, headers, body (iodata), delay_ms}`; the connection sends it.

  @errors %{
    400 => {"bad_request", "The request could not be understood."},
    401 => {"unauthorized", "Unable to authenticate you."},
    403 => {"forbidden", "You do not have access for the attempted action."},
    404 => {"not_found", "The resource you were accessing could not be found."},
    422 => {"unprocessable_entity", "The request could not be processed."},
    429 => {"too_many_requests", "API Rate limit exceeded."},
    500 => {"server_error", "Server was unable to give you a response."},
    502 => {"service_unavailable", "Bad gateway."},
    503 => {"service_unavailable", "Service is temporarily unavailable."},
    504 => {"service_unavailable", "Gateway timeout."}
  }

  @doc "The answer to a request, and the server's state after it."
  def decide(req, state) do
    now = System.monotonic_time(:millisecond)
    unix_ms = System.system_time(:millisecond)
    limits = state.limits
    hits = Enum.take_while(state.hits, &(&1 > now - max(limits.hour_ms, limits.minute_ms)))
    authorized? = authorized?(req.authorization, state.token)
    query = decode_query(req.query)

    {answer, fault, state} =
      cond do
        not authorized? ->
          {error(401), nil, state}

        throttled = throttle(hits, now, limits) ->
          {throttled, nil, state}

        true ->
          {fault, state} = take_fault(state, req.path, query)
          state = select_droplets(state, req.path, query)
          {respond(state, req, query, fault), fault, state}
      end

    hits = if answer.status in [401, 429], do: hits, else: [now | hits]
    answer = %{answer | headers: answer.headers ++ rate_headers(hits, now, unix_ms, limits)}

    entry = %{
      at_ms: now,
      unix_ms: unix_ms,
      method: req.method,
      path: req.path,
      query: elem(query, 1),
      status: answer.status,
      authorized: authorized?,
      fault: fault && elem(fault, 0),
      headers: Map.new(answer.headers)
    }

    {answer, %{state | hits: hits, log: [entry | state.log], count: state.count + 1}}
  end

  defp authorized?("" <> header, token) do
    case String.split(header, " ", parts: 2) do
      [scheme, given] -> String.downcase(scheme) == "bearer" and String.trim(given) == token
      _ -> false
    end
  end

  defp authorized?(nil, _token), do: false

  defp decode_query(query) do
    {:ok, URI.decode_query(query)}
  rescue
    ArgumentError -> {:error, %{}}
  end

  defp throttle(hits, now, limits) do
    minute = Enum.take_while(hits, &(&1 > now - limits.minute_ms))

    cond do
      Enum.count(hits, &(&1 > now - limits.hour_ms)) >= limits.per_hour ->
        error(429)

      length(minute) >= limits.per_minute ->
        frees_in =
          if minute == [], do: limits.minute_ms, else: List.last(minute) + limits.minute_ms - now

        error(429, nil, [{"retry-after", "#{max(ceil_div(frees_in, 1000), 1)}"}])

      true ->
        nil
    end
  end

  defp rate_headers(hits, now, unix_ms, limits) do
    hour = Enum.take_while(hits, &(&1 > now - limits.hour_ms))

    reset =
      if hour == [],
        do: div(unix_ms, 1000),
        else: ceil_div(unix_ms + List.last(hour) + limits.hour_ms - now, 1000)

    [
      {"ratelimit-limit", "#{limits.per_hour}"},
      {"ratelimit-remaining", "#{max(limits.per_hour - length(hour), 0)}"},
      {"ratelimit-reset", "#{reset}"}
    ]
  end

  defp ceil_div(a, b), do: div(max(a, 0) + b - 1, b)

  defp take_fault(state, path, query) do
    page =
      case query do
        {:ok, %{"page" => page}} -> with {n, ""} <- Integer.parse(page), do: n, else: (_ -> nil)
        _ -> 1
      end

    matches? = fn f ->
      f.page in [:any, page] and
        (f.path in [:any, path] or (is_struct(f.path, Regex) and Regex.match?(f.path, path)))
    end

    case Enum.split_while(state.faults, &(not matches?.(&1))) do
      {_, []} ->
        {nil, state}

      {before, [f | later]} ->
        left =
          if f.times == 1,
            do: [],
            else: [%{f | times: if(f.times == :infinity, do: :infinity, else: f.times - 1)}]

        {f.fault, %{state | faults: before ++ left ++ later}}
    end
  end

  defp respond(state, req, query, fault) do
    case fault do
      {:status, 429} -> error(429, nil, [{"retry-after", "1"}])
      {:status, code} -> error(code)
      {:status, code, message} -> error(code, message)
      {:json, json} -> answer(200, json)
      {:raw, raw} -> answer(200, raw)
      {:redirect, url} -> answer(302, "", [{"location", url}])
      {:slow, ms} -> %{route(state, req, query, nil) | delay_ms: ms}
      {:edit, fun} when is_function(fun, 1) -> route(state, req, query, fun)
      {:edit, fun} -> route(state, req, query, &fun.(&1, "#{state.url}#{req.path}?#{req.query}"))
      nil -> route(state, req, query, nil)
    end
  end

  defp route(state, %{method: "GET", path: path}, {:ok, q}, edit) do
    case String.split(path, "/", trim: true) do
      ["v2", "droplets"] ->
        list_droplets(state, q, edit)

      ["v2", "droplets", "autoscale"] ->
        pools =
          for p <- state.pools, q["name"] in [nil, p["name"]], do: render_pool(p, state.members)

        paged(
          state,
          {path, Map.take(q, ["name"])},
          q,
          {"autoscale_pools", List.to_tuple(pools), & &1},
          edit
        )

      ["v2", "droplets", "autoscale", id | rest] when rest in [[], ["members"]] ->
        case {Enum.find(state.pools, &(&1["id"] == id)), rest} do
          {nil, _} ->
            error(404)

          {pool, []} ->
            json(%{"autoscale_pool" => render_pool(pool, state.members)}, edit)

          {_, _} ->
            paged(
              state,
              {path, []},
              q,
              {"droplets", List.to_tuple(state.members[id]), & &1},
              edit
            )
        end

      _ ->
        error(404)
    end
  end

  defp route(_state, %{method: "GET"}, {:error, _}, _),
    do: error(400, "The query string is malformed.")

  defp route(_state, _req, _query, _edit), do: error(404)

  # A client walks every page of a listing in turn: the droplets each filter
  # selects are kept, as a tuple to slice, until the droplets change (see
  # FakeAPI.handle_call/3). Bounded: ever-new names cannot grow it forever.
  defp select_droplets(state, "/v2/droplets", {:ok, q}) do
    {tag, name, type} = key = filter(q)

    if Map.has_key?(state.selected, key) do
      state
    else
      selected =
        for d <- state.droplets,
            d.gpu? == (type == "gpus") and tag in [nil | d.tags] and name in [nil, d.name],
            do: d

      kept = if map_size(state.selected) < 64, do: state.selected, else: %{}
      %{state | selected: Map.put(kept, key, List.to_tuple(selected))}
    end
  end

  defp select_droplets(state, _path, _query), do: state

  defp filter(q),
    do: {q["tag_name"], q["name"] && String.downcase(q["name"]), q["type"] || "droplets"}

  defp list_droplets(state, q, edit) do
    {_, _, type} = key = filter(q)

    cond do
      Map.has_key?(q, "tag_name") and (Map.has_key?(q, "name") or Map.has_key?(q, "type")) ->
        error(422, "tag_name cannot be combined with name or type.")

      type not in ["droplets", "gpus"] ->
        error(400, "type must be droplets or gpus.")

      true ->
        params = Map.take(q, ~w(tag_name name type))
        render = if edit, do: & &1.map, else: & &1.json
        paged(state, {"/v2/droplets", params}, q, {"droplets", state.selected[key], render}, edit)
    end
  end

  defp paged(state, {path, params}, q, {key, items, render}, edit) do
    with {:ok, per_page} <- positive(q, "per_page", 20), {:ok, page} <- positive(q, "page", 1) do
      per_page = min(per_page, 200)
      total = tuple_size(items)
      last = max(div(total + per_page - 1, per_page), 1)
      query = &URI.encode_query([page: &1, per_page: per_page] ++ Enum.sort(params))
      link = &"#{state.url}#{path}?#{query.(&1)}"
      earlier = if page > 1, do: %{"first" => link.(1), "prev" => link.(min(page - 1, last))}
      later = if page < last, do: %{"next" => link.(page + 1), "last" => link.(last)}
      from = (page - 1) * per_page
      items = for i <- from..(min(from + per_page, total) - 1)//1, do: render.(elem(items, i))
      pages = Map.merge(earlier || %{}, later || %{})
      json(%{key => items, "links" => %{"pages" => pages}, "meta" => %{"total" => total}}, edit)
    end
  end

  defp positive(q, key, default) do
    case Integer.parse(Map.get(q, key, "#{default}")) do
      {n, ""} when n >= 1 -> {:ok, n}
      _ -> error(400, "#{key} must be a positive integer.")
    end
  end

  defp json(body, nil), do: answer(200, Jason.encode_to_iodata!(body))
  defp json(body, edit), do: answer(200, Jason.encode_to_iodata!(edit.(body)))

  defp error(status, message \\ nil, headers \\ []) do
    {id, default} = Map.get(@errors, status, {"error", "Error #{status}."})
    body = %{"id" => id, "message" => message || default, "request_id" => uuid()}

    answer(status, Jason.encode!(body), headers)
  end

  defp answer(status, body, headers \\ []),
    do: %{
      status: status,
      headers: [{"content-type", "application/json; charset=utf-8"} | headers],
      body: body,
      delay_ms: 0
    }

  @doc "A random UUID, as DigitalOcean's ids and request ids."
  def uuid do
    hex = Base.encode16(:crypto.strong_rand_bytes(16), case: :lower)
    <<a::binary-8, b::binary-4, c::binary-4, d::binary-4, e::binary-12>> = hex
    Enum.join([a, b, c, d, e], "-")
  end

  @doc "A pool as the API shows it: with its count of active members."
  def render_pool(pool, members) do
    active = Enum.count(Map.get(members, pool["id"], []), &(&1["status"] == "active"))
    Map.put(pool, "active_resources_count", active)
  end
end
