#!/bin/sh
# Generate the TypeScript messages (protoc-gen-es) from ../../proto (asap.v1) and ./proto
# (google.rpc, grpc.health.v1) into OUT (default src/gen). Uses the project's buf binary.
set -eu
cd "$(dirname "$0")/.."
OUT="${1:-src/gen}"
BUF="${BUF:-../../.venv/bin/buf}"
if [ ! -x "$BUF" ]; then
  echo "error: $BUF not found; run 'make setup' at the repository root" >&2
  exit 1
fi
if [ ! -x node_modules/.bin/protoc-gen-es ]; then
  echo "error: node_modules/.bin/protoc-gen-es not found; run 'npm ci' in clients/typescript" >&2
  exit 1
fi
rm -rf "$OUT"
mkdir -p "$OUT"
"$BUF" generate ../.. --template buf.gen.yaml -o "$OUT.tmp.$$" --path ../../proto/asap
"$BUF" generate proto --template buf.gen.yaml -o "$OUT.tmp.$$"
# buf nests the plugin's `out` (src/gen) under -o; flatten it into OUT.
cp -R "$OUT.tmp.$$/src/gen/." "$OUT/"
rm -rf "$OUT.tmp.$$"
