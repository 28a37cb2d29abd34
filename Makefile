# Two entry points for a fresh machine: `make run` (the example) and `make test` (every test).
# Both create .venv and build the Rust extension into it first.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.forge-built
# An editable install leaves forge's modules uncompiled, and where
# PYTHONDONTWRITEBYTECODE is set they would be compiled again at every start
# (50 ms of a supervisor's boot here); a wheel install compiles them, so do it too.
COMPILE = $(PY) -m compileall -q python/forge
# The SQL files are compiled into the extension too (include_str!).
SOURCES := pyproject.toml Cargo.toml $(shell find rust python -name '*.rs' -o -name '*.pyi' -o -name '*.sql' 2>/dev/null)

.PHONY: install run test test-rust test-python lint bench bench-quick clean

install: $(STAMP)

$(STAMP): $(SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	$(COMPILE)
	touch $@

run: $(STAMP)
	$(PY) examples/hello/run.py

test: test-rust test-python lint

test-rust:
	cargo test --quiet

test-python: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# The checked contracts, configured in pyproject.toml: mypy --strict on python/forge,
# ruff on the whole repo, and stubtest of python/forge/_core.pyi against the built
# extension. Every check runs; lint fails if any of them failed.
lint: $(STAMP)
	@status=0; \
	echo "$(PY) -m mypy"; $(PY) -m mypy || status=1; \
	echo "$(PY) -m ruff check ."; $(PY) -m ruff check . || status=1; \
	echo "$(PY) -m mypy.stubtest --mypy-config-file pyproject.toml forge._core"; \
	$(PY) -m mypy.stubtest --mypy-config-file pyproject.toml forge._core || status=1; \
	exit $$status

clean:
	rm -rf $(VENV) target examples/hello/.forge .mypy_cache .ruff_cache

# Every benchmark side by side on a throwaway durable PostgreSQL, with the peers
# (PgQueuer, Procrastinate, Celery) in benches/.venv-peers: ~20-30 min, table + benches/results/*.json.
bench: $(STAMP)
	$(COMPILE)
	$(PY) benches/run.py

bench-quick: $(STAMP)
	$(COMPILE)
	$(PY) benches/run.py --quick
