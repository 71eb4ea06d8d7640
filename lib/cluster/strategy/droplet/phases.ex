defmodule Cluster.Strategy.Droplet.Poll do
  @moduledoc false
  # An API poll in flight: `:listing` (the NIF lists), then `:probing` (the
  # NIF runs the health checks of the selected nodes), then applied.
  # `call` is the NIF call of the current stage, cancelled if the poll is
  # given up; `key` orders the view it yields; `shared?` says whether its
  # verdicts went to the followers already (a node that takes over while
  # its poll is in flight shares when the poll ends).

  @enforce_keys [:started, :listed_at]
  defstruct [
    :started,
    :listed_at,
    :call,
    :listing,
    :verdicts,
    :key,
    :delay,
    :probed_at,
    stage: :listing,
    shared?: false
  ]

  @type t :: %__MODULE__{
          stage: :listing | :probing,
          started: integer(),
          listed_at: integer(),
          call: LibclusterDroplet.Call.t() | nil,
          listing: LibclusterDroplet.Listing.t() | nil,
          verdicts: [LibclusterDroplet.Verdict.t()] | nil,
          key: {integer(), non_neg_integer()} | nil,
          delay: pos_integer() | nil,
          probed_at: integer() | nil,
          shared?: boolean()
        }
end

defmodule Cluster.Strategy.Droplet.ShareCheck do
  @moduledoc false
  # A leader's share being health-checked before it is applied.

  @enforce_keys [:share, :verdicts]
  defstruct [:share, :verdicts, :call, :probed_at]

  @type t :: %__MODULE__{
          share: LibclusterDroplet.Share.t(),
          verdicts: [LibclusterDroplet.Verdict.t()],
          call: LibclusterDroplet.Call.t() | nil,
          probed_at: integer() | nil
        }
end
