[
  inputs: [
    "{mix,.formatter}.exs",
    "checksum-*.exs",
    "{config,lib,test,bench,demo}/**/*.{ex,exs}"
  ]
]
