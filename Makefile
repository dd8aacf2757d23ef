# trustd: `make run` starts trustd up with embedded defaults; `make test` runs everything.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
NATIVE_SRC := setup.py trustd/dataplane/_native.c
NATIVE := $(VENV)/.native-$(shell cat $(NATIVE_SRC) | sha1sum | cut -c1-12)
ASAN := build/asan

.PHONY: run test test-asan lint unit integration bench system-deps clean proto

# system-deps first: `pip install -e` compiles the native data-plane core (gcc, libssl-dev)
$(STAMP): pyproject.toml | system-deps
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

# the native core again when its sources change (`pip install -e` builds it the first time)
$(NATIVE): $(NATIVE_SRC) | $(STAMP)
	$(BIN)/python setup.py -q build_ext --inplace 2>&1 | grep -v -i 'beta' || true
	@test -n "$$(ls trustd/dataplane/_native*.so)"
	@touch $@

run: $(NATIVE)
	$(BIN)/trustd up

# Debian packages the integration suites need (SoftHSM2 for PKCS#11, PostgreSQL, wrk, gcc,
# libssl-dev, HAProxy)
system-deps:
	@./scripts/system-deps.sh

lint: $(STAMP)
	$(BIN)/ruff check trustd tests bench
	$(BIN)/ruff format --check trustd tests bench
	$(BIN)/mypy
	$(BIN)/mypy --config-file tests/mypy.ini tests

test: $(NATIVE) system-deps lint
	$(BIN)/pytest -q tests

# The native core built with AddressSanitizer (a separate copy under build/asan): the
# proxy suites on it, millions of fuzzed sniffer/ClientHello inputs, and a short benchmark.
test-asan: $(NATIVE)
	rm -rf $(ASAN)
	TRUSTD_NATIVE_CFLAGS="-fsanitize=address -fno-omit-frame-pointer -O1 -g" \
	  $(BIN)/python setup.py -q build_ext --build-lib $(ASAN) --build-temp $(ASAN)/tmp 2>&1 | grep -v -i 'beta' || true
	TRUSTD_NATIVE_MODULE="$$(ls $(ASAN)/trustd/dataplane/_native*.so)" \
	  LD_PRELOAD="$$(gcc -print-file-name=libasan.so)" ASAN_OPTIONS=detect_leaks=0 \
	  $(BIN)/python -c 'from trustd.dataplane.native import load_native; assert load_native().SANITIZED, "not the ASAN build"'
	TRUSTD_NATIVE_MODULE="$$(ls $(ASAN)/trustd/dataplane/_native*.so)" \
	  TRUSTD_FUZZ_ITERATIONS=3000000 ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
	  LD_PRELOAD="$$(gcc -print-file-name=libasan.so)" \
	  $(BIN)/pytest -q -p no:cacheprovider -k 'native' tests/unit/dataplane tests/integration/dataplane/test_dataplane_process.py
	TRUSTD_NATIVE_MODULE="$$(ls $(ASAN)/trustd/dataplane/_native*.so)" \
	  TRUSTD_SIDECAR_PRELOAD="$$(gcc -print-file-name=libasan.so)" ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
	  $(BIN)/python bench/dataplane.py --sidecars trustd-native --seconds 2 --runs 1 --idle 1000 --asan-check

unit: $(NATIVE)
	$(BIN)/pytest -q tests/unit

# trustd/api: messages and grpclib stubs from the .proto files (checked in; a unit test
# regenerates them into a temporary directory and fails on any difference)
proto: $(STAMP)
	PY=$(BIN)/python ./scripts/gen-proto.sh

bench: $(NATIVE)
	$(BIN)/python bench/issuance.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
