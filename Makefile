# The two commands a newcomer needs: `make demo` and `make test`. Both create .venv themselves.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
RELEASED_IMAGE := proto/released/asap-v1.binpb

.PHONY: setup demo test lint typecheck check-generated generate pytest bench bench-interpreted release-schema lock clean \
	npm-setup test-ts generate-ts check-generated-ts redis compiled pytest-compiled

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

test: setup redis lint typecheck check-generated pytest pytest-compiled test-ts

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

# ASAP's hot modules compiled with mypyc into .build/compiled (scripts/compile.py; needs gcc and the
# Python headers), and the conformance suite run again on that build: the same cases, assertions
# and transports, so the compiled modules are held to the same semantics.
compiled: setup
	$(PY) scripts/compile.py

pytest-compiled: compiled redis
	PYTHONASYNCIODEBUG=1 ASAP_EXPECT_COMPILED=1 PYTHONPATH=$$($(PY) scripts/compile.py --python-path) \
		$(BIN)/pytest -q -p no:cacheprovider tests/conformance

generate: setup
	$(PY) scripts/generate.py

# The mypyc build (what a deployment that wants the speed runs); `make bench-interpreted` measures
# the sources as they are. Both keep raw grpc.aio and raw websockets in the same run.
bench: setup redis
	$(PY) scripts/bench.py --compiled
	$(PY) scripts/bench.py --compiled --stores

bench-interpreted: setup redis
	$(PY) scripts/bench.py
	$(PY) scripts/bench.py --stores

# Run only when a schema version is released (docs/versioning.md): records proto/VERSION as released
# and keeps its image; later schemas must stay wire compatible with it.
release-schema: setup
	$(PY) scripts/release_schema.py

lock: setup
	(echo "# Exact versions the dev environment is tested with (pip -c). Regenerate deliberately: make lock"; \
	 $(PY) -m pip freeze --exclude-editable | sort) > constraints.txt

# The TypeScript client (clients/typescript): npm deps from package-lock.json, Debian's chromium for
# the browser tests (installed with apt-get when running as root, else a clear error), generated
# code checked for drift, then the Node, gRPC-interop and Chromium suites against test/server.py.
TS := clients/typescript
TS_STAMP := $(TS)/node_modules/.ci-stamp

$(TS_STAMP): $(TS)/package.json $(TS)/package-lock.json
	@command -v node >/dev/null && command -v npm >/dev/null || { echo "error: Node.js 20+ and npm are needed for the TypeScript client (apt-get install nodejs npm)" >&2; exit 1; }
	@node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' || { echo "error: Node.js 20+ is needed (found $$(node --version))" >&2; exit 1; }
	cd $(TS) && npm ci --no-audit --no-fund --loglevel=error
	touch $(TS_STAMP)

npm-setup: $(TS_STAMP)

generate-ts: setup npm-setup
	cd $(TS) && sh scripts/generate.sh src/gen

check-generated-ts: setup npm-setup
	cd $(TS) && sh scripts/check-generated.sh

test-ts: setup npm-setup check-generated-ts
	sh $(TS)/scripts/ensure-chromium.sh
	cd $(TS) && npm run --silent build && npm run --silent build:test
	cd $(TS) && node --test --test-concurrency=1 --test-reporter=dot build/test/node.test.js build/test/grpc.test.js
	cd $(TS) && node --test --test-concurrency=1 --test-reporter=dot build/test/browser.test.js

clean:
	rm -rf $(VENV) dist build .build .mypy_cache .ruff_cache .pytest_cache
	rm -rf $(TS)/node_modules $(TS)/dist $(TS)/build
