#!/usr/bin/env bash
# Installs mimo's build dependencies (Debian 12 packages) when missing, then configures and builds.
# Idempotent: a second run installs nothing and rebuilds only what changed.
#   MIMO_BUILD_DIR   build folder (default: build)
#   MIMO_CMAKE_ARGS  extra configure arguments, e.g. "-DMIMO_SANITIZE=ON -DMIMO_CUDA=OFF"
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/apt-install.sh cmake ninja-build g++ ccache pkg-config \
  libabsl-dev libcli11-dev nlohmann-json3-dev libyaml-cpp-dev \
  libgrpc++-dev libgrpc-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc \
  golang-github-gogo-googleapis-dev libsqlite3-dev prometheus-cpp-dev openssl \
  libgloo-dev libgtest-dev libgmock-dev libbenchmark-dev libpng-dev libjpeg62-turbo-dev \
  libsentencepiece-dev

build_dir=${MIMO_BUILD_DIR:-build}
if [[ ! -f $build_dir/build.ninja ]]; then
  # shellcheck disable=SC2086  # MIMO_CMAKE_ARGS is a list of arguments.
  cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo ${MIMO_CMAKE_ARGS:-}
fi
cmake --build "$build_dir" -j"$(nproc)"
