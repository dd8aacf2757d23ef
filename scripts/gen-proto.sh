#!/bin/sh
# Regenerate trustd/api's messages (_pb2.py, .pyi) and grpclib stubs (_grpc.py) from
# the .proto files, into OUT (default: the source tree). `make proto` runs this; the
# drift test runs it into a temporary directory and compares.
set -eu
PY="${PY:-.venv/bin/python}"
# the grpclib plugin (protoc-gen-grpclib_python) is installed next to the interpreter
PATH="$(dirname "$PY"):$PATH"
export PATH
OUT="${1:-.}"
mkdir -p "$OUT"
PROTOS=$(find trustd/api -name '*.proto' | sort)
# shellcheck disable=SC2086
"$PY" -m grpc_tools.protoc -I . \
  --python_out="$OUT" --pyi_out="$OUT" --grpclib_python_out="$OUT" $PROTOS
