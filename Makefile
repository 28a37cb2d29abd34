# Two entry points for a fresh machine: `make run` (the example) and `make test` (every test).
# Both create .venv and build the Rust extension into it first.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.forge-built
SOURCES := pyproject.toml Cargo.toml $(shell find rust python -name '*.rs' -o -name '*.pyi' 2>/dev/null)

.PHONY: install run test test-rust test-python bench bench-quick clean

install: $(STAMP)

$(STAMP): $(SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

run: $(STAMP)
	$(PY) examples/hello/run.py

test: test-rust test-python

test-rust:
	cargo test --quiet

test-python: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) target examples/hello/.forge

# Every benchmark side by side on a throwaway durable PostgreSQL, with the peers
# (PgQueuer, Procrastinate, Celery) in benches/.venv-peers: ~20-30 min, table + benches/results/*.json.
bench: $(STAMP)
	$(PY) benches/run.py

bench-quick: $(STAMP)
	$(PY) benches/run.py --quick
