#!/usr/bin/env bash
# Regenerates the Python protobuf/gRPC modules in python/src/rrq/v1 from proto/.
# Called by `make gen`; uses the pinned grpcio-tools and mypy-protobuf from
# python/requirements-dev.txt.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$root/python/src"
rm -f "$out"/rrq/v1/*_pb2*.py "$out"/rrq/v1/*_pb2*.pyi
python -m grpc_tools.protoc -I"$root/proto" \
  --python_out="$out" --mypy_out="$out" \
  --grpc_python_out="$out" --mypy_grpc_out="$out" \
  "$root"/proto/rrq/v1/*.proto
cat > "$out/rrq/v1/__init__.py" <<'PY'
"""Generated from proto/rrq/v1 by `make gen`. Do not edit."""
PY
