[
  inputs: [
    "{mix,.formatter}.exs",
    "mix/*.exs",
    "checksum-*.exs",
    "{config,lib,test,bench,demo}/**/*.{ex,exs}"
  ]
]
