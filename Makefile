# The two commands a newcomer needs: `make demo` and `make test`. Both create .venv themselves.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
RELEASED_IMAGE := proto/released/asap-v1.binpb

.PHONY: setup demo test lint typecheck check-generated generate pytest bench release-schema lock clean redis

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "ASAP needs Python 3.11+")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# The test suite starts its own redis-server (tests/redis_server.py); this installs the binary.
redis:
	sh scripts/ensure_redis.sh

demo: setup
	$(PY) -m asap.demo

test: setup redis lint typecheck check-generated pytest

lint: setup
	$(BIN)/buf lint
	$(BIN)/buf breaking --against $(RELEASED_IMAGE)
	$(BIN)/ruff check asap tests scripts examples
	$(BIN)/ruff format --check asap tests scripts examples
	$(BIN)/lint-imports

typecheck: setup
	$(BIN)/mypy

check-generated: setup
	$(PY) scripts/generate.py --check

pytest: setup redis
	PYTHONASYNCIODEBUG=1 $(BIN)/pytest -q

generate: setup
	$(PY) scripts/generate.py

bench: setup redis
	$(PY) scripts/bench.py
	$(PY) scripts/bench.py --stores

# Run only when a schema version is released: later schemas must stay wire compatible with it.
release-schema: setup
	$(BIN)/buf build --exclude-source-info -o $(RELEASED_IMAGE)

lock: setup
	(echo "# Exact versions the dev environment is tested with (pip -c). Regenerate deliberately: make lock"; \
	 $(PY) -m pip freeze --exclude-editable | sort) > constraints.txt

clean:
	rm -rf $(VENV) dist build .mypy_cache .ruff_cache .pytest_cache
