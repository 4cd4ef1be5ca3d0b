#!/bin/sh
# Fail when src/gen differs from what the protos generate now (drift check, run by `make test-ts`).
set -eu
cd "$(dirname "$0")/.."
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
sh scripts/generate.sh "$TMP/gen"
if ! diff -r "$TMP/gen" src/gen; then
  echo "error: clients/typescript/src/gen is out of date; run 'npm run generate' (or make generate-ts)" >&2
  exit 1
fi
echo "generated TypeScript is up to date"
