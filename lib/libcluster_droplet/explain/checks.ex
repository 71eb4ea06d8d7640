defmodule LibclusterDroplet.Explain.Checks do
  @moduledoc false
  # The checks of this node in an explanation: distribution, whether its
  # own name is selected (and the name its droplet needs), its last poll,
  # who polls, the rate-limit floor, nodes asked to leave, the view.

  alias LibclusterDroplet.Explain.{Facts, Format}
  alias LibclusterDroplet.Pipeline

  def checks(%Facts{mode: :offline} = facts), do: present([view(facts), pool(facts.view)])

  def checks(%Facts{} = facts) do
    present([
      distribution(facts),
      # A node without distribution joins nothing whatever the listing says.
      facts.alive? && listed(facts),
      poll(facts),
      polling(facts),
      rate_floor(facts),
      removing(facts),
      view(facts),
      pool(facts.view)
    ])
  end

  defp present(checks), do: Enum.filter(checks, &is_tuple/1)

  # Whether this node joins no one: it must be listed, and is not.
  def unlisted?(%Facts{mode: :offline}), do: false

  def unlisted?(%Facts{} = facts),
    do: Map.get(facts.config, :require_listed, true) and facts.alive? and not self_listed?(facts)

  defp self_listed?(%Facts{view: nil}), do: false
  defp self_listed?(%Facts{view: view}), do: Pipeline.self_listed?(view.verdicts)

  defp distribution(%Facts{alive?: false} = facts) do
    {:warning,
     "distribution is not started (this node is #{inspect(facts.self)}): it connects to no one; " <>
       "start it with a long name, basename@address (RELEASE_DISTRIBUTION=name, RELEASE_NODE=app@<address>)"}
  end

  defp distribution(%Facts{longnames?: false} = facts) do
    {:warning,
     "this node runs with short names (#{inspect(facts.self)}): nodes named basename@address need " <>
       "long names (-name, RELEASE_DISTRIBUTION=name)"}
  end

  defp distribution(facts),
    do: {:ok, "distribution is started with long names: this node is #{inspect(facts.self)}"}

  defp listed(%Facts{view: nil}),
    do: {:info, "no view yet: whether this node is among the selected droplets is not known"}

  defp listed(%Facts{view: view} = facts) do
    targets = view.verdicts |> Pipeline.targets() |> Enum.map(&elem(&1, 0))

    cond do
      self_listed?(facts) ->
        {:ok, "this node is among the selected droplets (#{length(targets) + 1} in all)"}

      Map.get(facts.config, :require_listed, true) ->
        {:warning,
         Format.not_listed(view.verdicts, facts.self) <>
           ": fix RELEASE_NODE (basename@ the droplet's #{Format.network(facts.config)} " <>
           "address) or :node_basename, or set require_listed: false on a node that is not a droplet"}

      true ->
        {:info,
         "this node #{inspect(facts.self)} is not among the selected droplets; " <>
           "require_listed: false lets it join anyway"}
    end
  end

  defp poll(%Facts{last_poll_at: nil, failures: 0}),
    do: {:info, "no API poll has succeeded yet on this node"}

  defp poll(%Facts{failures: 0} = facts),
    do:
      {:ok,
       "last successful API poll #{Format.ago(facts.now, facts.last_poll_at)} (#{facts.polls} in all)"}

  defp poll(%Facts{} = facts) do
    {class, message} = facts.last_error || {:unknown, "unknown"}

    last =
      if facts.last_poll_at,
        do: "the last success was #{Format.ago(facts.now, facts.last_poll_at)}",
        else: "none has succeeded yet"

    {:warning,
     "the last #{facts.failures} API polls failed (#{class}: #{message}); #{last}; " <>
       "membership is kept as it is"}
  end

  defp polling(%Facts{polling: :leads}),
    do: {:info, "this node polls the API for the cluster and shares what it finds"}

  defp polling(%Facts{polling: {:follows, leader, at}} = facts) do
    seen = if at, do: " (its last share arrived #{Format.ago(facts.now, at)})", else: ""
    {:info, "this node follows #{inspect(leader)}, which polls the API for the cluster#{seen}"}
  end

  defp polling(%Facts{config: config}) do
    if Map.get(config, :coordinate, true),
      do: {:info, "this node polls the API on its own (connected to no other strategy yet)"},
      else: {:info, "coordinate: false: this node polls the API on its own"}
  end

  defp rate_floor(%Facts{not_before: at, now: now}) when is_integer(at) and at > now,
    do:
      {:info,
       "the API's rate limit holds every request back for #{Format.duration(at - now)} more"}

  defp rate_floor(_facts), do: nil

  defp removing(%Facts{removing: []}), do: nil

  defp removing(%Facts{removing: nodes}),
    do:
      {:info,
       "asked to leave, still connected: #{Format.names(nodes)} (their droplets are no longer selected)"}

  defp pool(%{pool: %{tags: tags} = pool}) do
    listed =
      case tags do
        [tag | _] -> "its droplets are listed by the template's tag #{inspect(tag)}"
        [] -> "its template has no tag, so every droplet page is listed at each poll"
      end

    {:info,
     "autoscale pool #{inspect(pool.name)} (#{pool.id}): #{pool.members} members, " <>
       "#{pool.active} active; #{listed}"}
  end

  defp pool(_view), do: nil

  defp view(%Facts{view: nil}), do: nil

  defp view(%Facts{view: view} = facts) do
    from =
      case view.source do
        :listing -> "the API listing"
        {:share, from} -> "the share from #{inspect(from)}"
      end

    applied =
      if facts.mode == :offline,
        do: "",
        else: ", applied #{Format.ago(facts.now, view.applied_at)}"

    {:info,
     "#{length(view.verdicts)} droplets in #{from} of #{Format.timestamp(view.listed_at)}#{applied}"}
  end
end
