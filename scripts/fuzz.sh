#!/usr/bin/env bash
# Builds the spec-parsing fuzzer (libFuzzer + ASan + UBSan, Clang 14) in its own build folder and
# runs it for a bounded time over a copy of its seed corpus (examples/*.yaml); exits non-zero on a
# crash, leak, timeout or sanitizer report, leaving the input under the build folder.
#   MIMO_FUZZ_BUILD_DIR  build folder (default: build-fuzz)
#   MIMO_FUZZ_SECONDS    fuzzing time (default: 30)
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/apt-install.sh clang-14 libclang-rt-14-dev

build_dir=${MIMO_FUZZ_BUILD_DIR:-build-fuzz}
if [[ ! -f $build_dir/build.ninja ]]; then
  CC=clang-14 CXX=clang++-14 cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DMIMO_FUZZ=ON -DMIMO_CUDA=OFF -DMIMO_BUILD_BENCH=OFF
fi
cmake --build "$build_dir" -j"$(nproc)" --target spec_fuzz

corpus=$(mktemp -d)
trap 'rm -rf "$corpus"' EXIT
cp "$build_dir"/tests/fuzz/spec_fuzz_seeds/* "$corpus"/
"$build_dir"/bin/spec_fuzz -max_total_time="${MIMO_FUZZ_SECONDS:-30}" -rss_limit_mb=2048 \
  -timeout=10 -max_len=16384 -print_final_stats=1 -artifact_prefix="$build_dir/spec_fuzz-" \
  "$corpus"
