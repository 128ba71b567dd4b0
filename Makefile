# Two commands on a fresh machine:  `make train` (set up, run the main job)  and  `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The tested PyTorch. Where a CPU wheel lies on disk (PIP_FIND_LINKS), uv is told to look there.
TORCH  ?= torch==2.13.0
export UV_FIND_LINKS ?= $(PIP_FIND_LINKS)
# The default source is the Hugging Face hub's stanfordnlp/imdb; a local copy beside the
# checkout (no hub access here) is used when present. Override: make train SENTIFLOW_SOURCE=...
export SENTIFLOW_SOURCE ?= $(if $(wildcard ../shared/data/imdb/train.parquet),../shared/data/imdb,stanfordnlp/imdb)
export MLFLOW_DISABLE_TELEMETRY ?= true
export DO_NOT_TRACK ?= 1

.PHONY: setup train score test bench lint clean compose-check-tool browser-tool postgres-tool

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q uv
	$(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python "$(TORCH)" -e ".[dev]"
	touch $@

setup: $(BIN)/.installed

train: setup
	$(BIN)/sentiflow train

# the champion on the source's test part (predictions Parquet + an evaluation run in MLflow)
score: setup
	$(BIN)/sentiflow score

# docker-compose (v1, Debian's) validates docker-compose.yml offline in tests/test_compose.py;
# installed when missing where apt-get can (CI runs as root), skipped by that test otherwise.
compose-check-tool:
	@command -v docker-compose >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null) \
	  || echo "note: docker-compose not installed; its compose check will be skipped"; }

# Debian's chromium (headless) for tests/test_browser.py, which looks at the MLflow and Prefect UIs in a
# real browser; installed when missing where apt-get can (CI runs as root), skipped by that test otherwise.
browser-tool:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "note: chromium not installed; the browser test will be skipped"; }

# Debian's postgresql (initdb, pg_ctl) for tests/test_server.py, which runs the MLflow and Prefect servers
# on a temporary cluster on loopback (no system service is started); installed when missing where
# apt-get can (CI runs as root), skipped by that test otherwise.
postgres-tool:
	@{ command -v pg_config >/dev/null && [ -x "$$(pg_config --bindir)/initdb" ]; } || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
	  || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) \
	  || echo "note: PostgreSQL not installed; the server tests will be skipped"; }

# The modules on TEST_WORKERS processes (pytest-xdist), each module whole on one, the heaviest
# first (tests/conftest.py: HEAVY_FIRST; --no-loadscope-reorder keeps that order)
TEST_WORKERS ?= 3
test: setup compose-check-tool browser-tool postgres-tool
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

bench: setup
	$(BIN)/python tests/bench/bench_data.py --source $(SENTIFLOW_SOURCE)
	$(BIN)/sentiflow prepare --source $(SENTIFLOW_SOURCE)
	$(BIN)/python tests/bench/bench_train.py --data-root data

lint: setup
	$(BIN)/ruff check flows tasks storage tests

clean:
	rm -rf $(VENV) data
