defmodule LibclusterDroplet.Telemetry do
  @moduledoc false
  # `:telemetry` is an optional dependency: events are emitted only when the
  # host application has it loaded.

  @compile {:no_warn_undefined, :telemetry}

  @spec execute([atom()], map(), map()) :: :ok
  def execute(event, measurements, metadata) do
    if Code.ensure_loaded?(:telemetry) do
      :telemetry.execute(event, measurements, metadata)
    end

    :ok
  end
end
