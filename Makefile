# The README's commands. `make serve` and `make test` work on a fresh machine: they create the
# virtual environment and install what they need first.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 50051
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: serve kernels test fuzz lint proto proto-check clients bench install dev clean

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-dev: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[dev]'
	# xds-protos (Envoy's protos, for the envoy.yaml check) ships an older copy of
	# opentelemetry/proto that, installed last, breaks the OTLP exporter: put the real one back
	$(BIN)/pip install -q --force-reinstall --no-deps "opentelemetry-proto==$$($(BIN)/python -c 'import importlib.metadata as m; print(m.version("opentelemetry-proto"))')"
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
# the dev extras, and the kernels compiled so the CLI's first in-process plan does not compile
dev: $(VENV)/.installed-dev $(VENV)/.kernels

# Compile the planner's kernels into Numba's cache once per change of the planner's source, so
# that `serve` loads them and reports SERVING in seconds instead of compiling for a minute or more
# (figures: README, "Kernel compile"). The cache directory is keyed by the same source hash.
PLANNER_SOURCES := $(shell find pdplanner/planner -name '*.py')
$(VENV)/.kernels: $(VENV)/.installed $(PLANNER_SOURCES)
	$(BIN)/python -c "from pdplanner import planner; print(f'kernels compiled in {planner.warmup():.1f} s')"
	touch $@

kernels: $(VENV)/.kernels

serve: $(VENV)/.kernels
	$(BIN)/pdplanner db upgrade
	$(BIN)/pdplanner serve --port $(PORT)

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q

# every RPC's request message fuzzed with 10,000 examples (the suite runs 3,000)
fuzz: $(VENV)/.installed-dev
	PDPLANNER_FUZZ_EXAMPLES=10000 $(BIN)/python -m pytest -q -s tests/integration/test_fuzz.py

lint: $(VENV)/.installed-dev proto-check
	$(BIN)/ruff check pdplanner tests bench tools deploy
	$(BIN)/ruff format --check pdplanner tests bench tools deploy
	$(BIN)/mypy
	cd protos && ../$(BIN)/buf lint

# Python, Go and TypeScript stubs. Go's generators come from Debian (protoc-gen-go,
# protoc-gen-go-grpc), TypeScript's from clients/node's npm packages (`make clients` installs them).
proto: $(VENV)/.installed-dev
	PATH=$(abspath $(BIN)):$$PATH tools/gen_proto.sh

proto-check: $(VENV)/.installed-dev
	PATH=$(abspath $(BIN)):$$PATH tools/gen_proto.sh --check

# What the Go and TypeScript examples need: Debian's Go sources linked into clients/go/vendor,
# and clients/node's locked npm packages (the Go toolchain itself: see clients/go/README.md).
clients:
	clients/go/vendor-debian.sh
	cd clients/node && npm ci --no-audit --no-fund

bench: $(VENV)/.installed-dev
	$(BIN)/python -m bench.step_eval
	$(BIN)/python -m bench.plan_search
	$(BIN)/python -m bench.rpc_latency
	$(BIN)/python -m bench.ratematch

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
