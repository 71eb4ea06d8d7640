[
  inputs: [
    "{mix,.formatter}.exs",
    "checksum-*.exs",
    "{config,lib,test,bench,demo,scripts}/**/*.{ex,exs}"
  ]
]
