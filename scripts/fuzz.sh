#!/usr/bin/env bash
# Builds the fuzzers (libFuzzer + ASan + UBSan, Clang 14) in their own build folder and runs each
# for a bounded time over a copy of its seed corpus: the spec parser (examples/*.yaml) and the
# safetensors header parser (two files made here); exits non-zero on a crash, leak, timeout or
# sanitizer report, leaving the input under the build folder.
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
cmake --build "$build_dir" -j"$(nproc)" --target spec_fuzz safetensors_fuzz

corpus=$(mktemp -d)
trap 'rm -rf "$corpus"' EXIT
# fuzz TARGET SEED_DIR: the target for the bounded time over a copy of the seeds.
fuzz() {
  rm -rf "${corpus:?}"/*
  cp "$2"/* "$corpus"/
  "$build_dir/bin/$1" -max_total_time="${MIMO_FUZZ_SECONDS:-30}" -rss_limit_mb=2048 \
    -timeout=10 -max_len=16384 -print_final_stats=1 -artifact_prefix="$build_dir/$1-" "$corpus"
}
fuzz spec_fuzz "$build_dir"/tests/fuzz/spec_fuzz_seeds
# Safetensors seeds: an empty header, and two tensors with metadata (8-byte length first).
seeds=$(mktemp -d)
trap 'rm -rf "$corpus" "$seeds"' EXIT
safetensors_seed() {  # NAME HEADER DATA_BYTES
  local n=${#2} length=""
  for i in 0 1 2 3 4 5 6 7; do length+=$(printf '\\x%02x' $(((n >> (8 * i)) & 255))); done
  { printf '%b' "$length"; printf '%s' "$2"; head -c "$3" /dev/zero; } >"$seeds/$1"
}
safetensors_seed empty '{}' 0
safetensors_seed two '{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},"b":{"dtype":"BF16","shape":[4],"data_offsets":[24,32]}}' 32
fuzz safetensors_fuzz "$seeds"
