# trustd: `make run` starts trustd up with embedded defaults; `make test` runs everything.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: run test lint unit integration bench system-deps clean proto

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

run: $(STAMP)
	$(BIN)/trustd up

# Debian packages the integration suites need (SoftHSM2 for PKCS#11, PostgreSQL, wrk)
system-deps:
	@./scripts/system-deps.sh

lint: $(STAMP)
	$(BIN)/ruff check trustd tests bench
	$(BIN)/mypy

test: $(STAMP) system-deps lint
	$(BIN)/pytest -q tests

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

# trustd/api: messages and grpclib stubs from the .proto files (checked in; a unit test
# regenerates them into a temporary directory and fails on any difference)
proto: $(STAMP)
	PY=$(BIN)/python ./scripts/gen-proto.sh

bench: $(STAMP)
	$(BIN)/python bench/issuance.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
