# Two commands do everything, on a fresh machine too:
#   make demo   the fake DigitalOcean API plus real nodes clustering through the strategy
#   make test   every check CI runs (Rust, Elixir, and the docs)
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

# rustup installs cargo here; non-login shells often lack it on the PATH.
export PATH := $(HOME)/.cargo/bin:$(PATH)
# Debian's Elixir wants a UTF-8 locale to read source files correctly.
export LANG ?= C.UTF-8
export LC_ALL ?= C.UTF-8

SUDO := $(shell [ "$$(id -u)" != 0 ] && command -v sudo >/dev/null && echo sudo)

# Hex is out of reach here, so mix.exs's one switch is on:
# LIBCLUSTER_DROPLET_VENDOR=DIR turns every Hex dependency into `path:
# DIR/<app>`. DIR is a writable copy of ../shared/vendor (earmark_parser,
# ex_doc's, writes into its own src/ when it first compiles; the original
# may be read-only). CONTRIBUTING.md has the details.
VENDOR_SOURCE ?= $(CURDIR)/../shared/vendor
VENDOR_COPY := $(CURDIR)/_build/vendor
export LIBCLUSTER_DROPLET_VENDOR := $(VENDOR_COPY)
# One cargo build directory for `cargo test` and every Mix environment's
# NIF build (Rustler builds under _build/<env> unless told).
export CARGO_TARGET_DIR ?= $(CURDIR)/target

.PHONY: all setup vendor test test-rust test-elixir docs test-under-load demo bench precompile clean

all: test

# Elixir 1.14 on Erlang/OTP 25 from Debian, when missing. No Hex package is
# ever fetched: the project has no Hex dependencies.
setup:
	@if ! command -v mix >/dev/null 2>&1 || ! command -v erl >/dev/null 2>&1; then \
	  echo "==> installing Elixir and Erlang/OTP from Debian"; \
	  $(SUDO) apt-get update; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y elixir erlang-dev; \
	fi
	@command -v cargo >/dev/null 2>&1 || { echo "cargo not found: install Rust from https://rustup.rs"; exit 1; }
	@cargo fetch --locked >/dev/null
	@$(MAKE) --no-print-directory vendor

# The copy is refreshed when any file of the original is newer than it.
vendor: $(VENDOR_COPY)/.copied
$(VENDOR_COPY)/.copied: $(shell find $(VENDOR_SOURCE) -type f 2>/dev/null)
	@test -d "$(VENDOR_SOURCE)" || { echo "$(VENDOR_SOURCE) is missing: the vendored Hex packages sit beside the repository"; exit 1; }
	rm -rf "$(VENDOR_COPY)"
	mkdir -p "$(VENDOR_COPY)"
	cp -R "$(VENDOR_SOURCE)/." "$(VENDOR_COPY)/"
	chmod -R u+w "$(VENDOR_COPY)"
	touch "$@"

test: setup test-rust test-elixir docs

test-rust:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings
	cargo test --workspace --locked

test-elixir:
	mix format --check-formatted
	MIX_ENV=test mix compile --warnings-as-errors
	MIX_ENV=test mix test

# HexDocs-style HTML in doc/, failing on any warning (a broken link, a
# reference to a hidden module...).
docs: setup
	MIX_ENV=dev mix docs --warnings-as-errors

# The Elixir suite three times in a row while a CPU-bound process runs
# beside it: no test may need an idle machine. Fails if any run fails; the
# busy loop is killed however the recipe ends.
test-under-load: setup
	MIX_ENV=test mix compile
	sh -c 'while :; do :; done' & hog=$$!; \
	trap 'kill $$hog 2>/dev/null || true' EXIT INT TERM; \
	for run in 1 2 3; do \
	  echo "==> mix test, run $$run of 3, beside a CPU-bound process (pid $$hog)"; \
	  MIX_ENV=test mix test; \
	done

demo: setup
	mix run --no-start demo/demo.exs

# `make bench BENCH="poll"` runs only bench/poll_bench.exs. The probe
# benchmark opens thousands of sockets: the soft open-files limit is raised to
# the hard one when allowed (it sizes itself down and says so otherwise).
bench: setup
	ulimit -n "$$(ulimit -Hn)" 2>/dev/null || true; \
	MIX_ENV=dev mix run --no-start bench/run.exs $(BENCH)

# The precompiled NIF of this machine's target, and its line in the
# checksum file (CONTRIBUTING.md, "Publishing"). ARGS="--output DIR".
precompile: setup
	mix run --no-start scripts/precompile.exs $(ARGS)

clean:
	cargo clean
	rm -rf _build doc
