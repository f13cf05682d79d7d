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

# Worker processes for the suite (pytest-xdist). The default is one process: on a 2-core machine
# the fault scenarios' deadlines (kill -9, database restarts) did not hold beside other tests
# run at the same time. TEST_WORKERS=3 spreads the rest over more processes on a bigger box.
TEST_WORKERS ?= 0
test: lint typecheck
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadgroup --durations=30

bench: $(STAMP)
	$(BIN)/python bench/engine.py

# The fault scenarios of tests/faults, again and again for SECONDS (not part of `make test`).
SECONDS ?= 600
soak: $(STAMP)
	$(BIN)/python -m tests.faults.soak --seconds $(SECONDS)

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
