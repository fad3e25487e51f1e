# Everything bootstraps .venv itself: `make run` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck pytest bench bench-quick bench-health bench-watch bench-stalls clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/dnsreg serve

lint: $(STAMP)
	$(BIN)/ruff check dnsreg tests bench
	$(BIN)/ruff format --check dnsreg tests bench
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy dnsreg

pytest: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint typecheck pytest

bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)
	$(BIN)/python -m bench.stalls

bench-quick: $(STAMP)
	$(BIN)/python -m bench --quick
	$(BIN)/python -m bench.health --quick
	$(BIN)/python -m bench.watch --quick
	$(BIN)/python -m bench.stalls --quick

bench-health: $(STAMP)
	$(BIN)/python -m bench.health $(BENCH_ARGS)

bench-watch: $(STAMP)
	$(BIN)/python -m bench.watch $(BENCH_ARGS)

bench-stalls: $(STAMP)
	$(BIN)/python -m bench.stalls $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
