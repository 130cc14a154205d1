#!/usr/bin/env bash
# bundle.sh OUT PROGRAM...: copies the programs into OUT/bin and the shared libraries they load into
# OUT/lib, except those every runtime image has (the C and C++ runtime), those NVIDIA's CUDA
# runtime image provides (the CUDA driver and runtime, cuBLAS, cuDNN, NCCL) and rdma-core's
# (libibverbs, librdmacm, libnl: the final stage installs them, and libibverbs must match the
# providers it loads from the system). The programs find OUT/lib through their RUNPATH
# ($ORIGIN/../lib), and the libraries find one another through theirs ($ORIGIN), both set here:
# a RUNPATH serves only the object that carries it, not the libraries it loads, so libgrpc++'s
# own libgrpc, upb, c-ares, re2 and absl would not be found without one of their own.
# deploy/docker/check-bundle.sh proves the result.
set -euo pipefail
out=$1
shift
mkdir -p "$out/bin" "$out/lib"
skip='^(linux-vdso|ld-linux|libc\.|libm\.|libdl\.|libpthread\.|librt\.|libstdc\+\+|libgcc_s|libcuda\.|libcudart|libcublas|libcudnn|libnccl|libnvidia|libnvrtc|libibverbs|librdmacm|libnl-)'
"$(dirname "$0")/../../scripts/apt-install.sh" patchelf
for program in "$@"; do
  cp "$program" "$out/bin/"
  # ldd lists the whole tree: the libraries' own dependencies too.
  ldd "$program" | awk '/=> \// { print $1, $3 }' | while read -r name path; do
    [[ $name =~ $skip ]] && continue
    [[ -e $out/lib/$name ]] || cp -L "$path" "$out/lib/$name"
  done
done
# Strip before patchelf: strip rewriting a file patchelf has grown can break it.
strip --strip-debug "$out"/bin/* "$out"/lib/* 2>/dev/null || true
for program in "$@"; do
  # shellcheck disable=SC2016  # $ORIGIN is ld.so's, not the shell's
  patchelf --set-rpath '$ORIGIN/../lib:$ORIGIN' "$out/bin/$(basename "$program")"
done
for lib in "$out"/lib/*; do
  # shellcheck disable=SC2016
  patchelf --set-rpath '$ORIGIN' "$lib"
done
