# RRQ: one entry point for setup, codegen, lint, tests, demo and benchmarks.
# `make help` lists the targets.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

ROOT := $(CURDIR)
VENV ?= $(ROOT)/.venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
# Cargo's target dir may live outside the checkout (CI reuses one across clones).
export CARGO_TARGET_DIR ?= $(ROOT)/rust/target
RRQ_BIN ?= $(CARGO_TARGET_DIR)/release/rrq
CARGO := cargo
RUST := cd rust &&

.PHONY: help setup gen gen-check lint fmt build test test-rust test-python test-typescript conformance faults fuzz demo bench bench-compare bench-lua proto-breaking clean

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

$(PY):
	python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# The pinned dev tools (codegen, lint, test libraries), installed again when
# their list changes: every target that runs one of them depends on this.
DEV_TOOLS := $(VENV)/.dev-tools
$(DEV_TOOLS): python/requirements-dev.txt | $(PY)
	$(BIN)/pip install -q -r python/requirements-dev.txt
	touch $@

setup: $(DEV_TOOLS) typescript/node_modules ## Create .venv, install the rrq package (orchestrator built and bundled), dev tools and npm packages
	$(BIN)/pip install -q -e ./python
	@$(BIN)/rrq --version

gen: $(DEV_TOOLS) typescript/node_modules ## Regenerate code from proto/, write the shared limits and copy the Lua scripts to every producer
	$(PY) tools/gen_shared.py
	PATH="$(BIN):$$PATH" tools/gen_python.sh
	$(RUST) $(CARGO) run -q -p rrq-gen
	rm -rf typescript/src/gen/rrq
	$(BIN)/buf generate --template buf.gen.yaml
	rm -f python/src/rrq/lua/*.lua
	cp rust/rrq-store/lua/*.lua python/src/rrq/lua/
	$(PY) tools/gen_lua_ts.py

typescript/node_modules: typescript/package-lock.json
	npm --prefix typescript ci --no-audit --no-fund --loglevel=error
	touch typescript/node_modules

# Outputs of tools/gen_shared.py outside the generated folders.
GEN_LIMITS := rust/rrq-store/lua rust/rrq-proto/src/limits.rs python/src/rrq/_limits.py

gen-check: gen ## Fail when generated code or Lua copies are stale
	@git diff --exit-code -- python/src/rrq/v1 python/src/rrq/lua rust/rrq-proto/src/gen typescript/src/gen $(GEN_LIMITS) \
	  || { echo "generated code is stale: run 'make gen' and commit" >&2; exit 1; }
	@test -z "$$(git status --porcelain -- python/src/rrq/v1 python/src/rrq/lua rust/rrq-proto/src/gen typescript/src/gen $(GEN_LIMITS))" \
	  || { echo "untracked generated files: run 'make gen' and commit" >&2; git status --porcelain; exit 1; }
	@for p in python/src/rrq/v1 python/src/rrq/lua rust/rrq-proto/src/gen typescript/src/gen; do \
	  test -n "$$(git ls-files "$$p")" || { echo ".gitattributes pattern $$p matches no file" >&2; exit 1; }; done

lint: $(DEV_TOOLS) typescript/node_modules ## Lint everything (never edits files)
	$(BIN)/buf lint
	$(BIN)/buf format -d --exit-code
	$(RUST) $(CARGO) fmt --all --check
	$(RUST) $(CARGO) clippy -q --workspace --all-targets -- -D warnings
	cd python && $(BIN)/ruff check . && $(BIN)/ruff format --check .
	cd python && $(BIN)/mypy
	$(BIN)/ruff check tools conformance-tests && $(BIN)/ruff format --check tools conformance-tests
	$(BIN)/mypy --strict tools/*.py
	$(BIN)/mypy --strict conformance-tests/harness conformance-tests/runners/python
	npm --prefix typescript run --silent typecheck

fmt: $(DEV_TOOLS) ## Format all code
	$(BIN)/buf format -w
	$(RUST) $(CARGO) fmt --all
	cd python && $(BIN)/ruff format . && $(BIN)/ruff check --fix .
	$(BIN)/ruff format tools && $(BIN)/ruff check --fix tools

build: ## Build the release orchestrator binary
	$(RUST) $(CARGO) build -q --release -p rrq

test: setup gen-check lint build test-rust test-python test-typescript conformance ## Run every check and test (the CI command)

test-rust: ## Rust unit and integration tests
	$(RUST) $(CARGO) test -q --workspace

test-python: setup build ## Python tests against a real Redis and the real orchestrator
	cd python && RRQ_BIN=$(RRQ_BIN) $(BIN)/pytest -q

test-typescript: setup build ## TypeScript tests (node:test) against a real Redis and the real orchestrator
	RRQ_BIN=$(RRQ_BIN) npm --prefix typescript test

conformance: setup build ## Every runner language against the real orchestrator: prints the scenario x language matrix
	RRQ_BIN=$(RRQ_BIN) $(PY) conformance-tests/harness/run.py

FUZZ_SECONDS ?= 60
fuzz: ## F30 wire-format fuzzing of the Rust decoders, FUZZ_SECONDS each (the Python runner's decoder is fuzzed in `make faults`)
	$(RUST) $(CARGO) run -q --profile fuzz -p rrq-fuzz -- --target all --seconds $(FUZZ_SECONDS)

faults: setup build ## Every fault-matrix row (docs/guarantees.md) with its checker line; the quick rows also run in test-python
	cd python && RRQ_BIN=$(RRQ_BIN) $(BIN)/pytest -q -s -m faults tests/faults

demo: setup ## Set everything up and run a real demo (private Redis, orchestrator, Python runner)
	$(PY) tools/demo.py

bench: setup build ## Throughput, latency percentiles and memory
	RRQ_BIN=$(RRQ_BIN) $(PY) tools/bench.py

bench-compare: setup build ## The same workloads through RRQ, BullMQ, SAQ and arq (installed in .rrq/bench-peers), with ratios
	RRQ_BIN=$(RRQ_BIN) $(PY) tools/bench_compare.py

bench-lua: $(DEV_TOOLS) ## Redis instructions per job spent in the Lua scripts, by callgrind (repeatable, unlike timings)
	$(PY) tools/lua_profile.py

proto-breaking: $(DEV_TOOLS) ## Check proto/ for breaking changes against main
	$(BIN)/buf breaking --against '.git#branch=main'

clean: ## Remove build outputs
	rm -rf $(CARGO_TARGET_DIR) python/build python/dist
