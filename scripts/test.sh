#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole test suite (labels unit, integration, gpu).
# GPU tests skip with their reason when no CUDA device is present. Without arguments it then runs
# the spec-parsing fuzzer briefly (scripts/fuzz.sh). Extra arguments go to ctest instead, and
# skip the fuzzer: e.g. scripts/test.sh -L unit.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
ctest --test-dir "${MIMO_BUILD_DIR:-build}" --output-on-failure --no-tests=error \
  -j"$(nproc)" "$@"
if (($# == 0)); then
  scripts/fuzz.sh
fi
