# cartback — the two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
export CARTBACK_DATABASE_URL ?= sqlite:///var/cartback.db

.PHONY: run test lint typecheck bench soak install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	@echo "cartback is installed in $(BIN); put it on your PATH with: source $(BIN)/activate"
	$(BIN)/cartback migrate
	$(BIN)/cartback demo
	$(BIN)/cartback serve

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy src/cartback

# Worker processes for the suite: one runs the fault scenarios in turn, the others the rest; most
# tests wait on servers, subprocesses and databases more than on the CPU, so 3 suit 2 cores
# without starving the scenarios' deadlines. TEST_WORKERS=0 runs it all in one process.
TEST_WORKERS ?= 3
test: lint typecheck
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadgroup

bench: $(STAMP)
	$(BIN)/python bench/engine.py

# The fault scenarios of tests/faults, again and again for SECONDS (not part of `make test`).
SECONDS ?= 600
soak: $(STAMP)
	$(BIN)/python -m tests.faults.soak --seconds $(SECONDS)

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
