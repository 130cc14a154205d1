#!/usr/bin/env bash
# bundle.sh OUT PROGRAM...: copies the programs into OUT/bin and the shared libraries they load into
# OUT/lib, except those every runtime image has (the C and C++ runtime) and those NVIDIA's CUDA
# runtime image provides (the CUDA driver and runtime, cuBLAS, cuDNN, NCCL). The programs find
# OUT/lib through their RPATH ($ORIGIN/../lib), set here.
set -euo pipefail
out=$1
shift
mkdir -p "$out/bin" "$out/lib"
skip='^(linux-vdso|ld-linux|libc\.|libm\.|libdl\.|libpthread\.|librt\.|libstdc\+\+|libgcc_s|libcuda\.|libcudart|libcublas|libcudnn|libnccl|libnvidia|libnvrtc)'
apt-get update -q && apt-get install -y -q --no-install-recommends patchelf >/dev/null
for program in "$@"; do
  cp "$program" "$out/bin/"
  ldd "$program" | awk '/=> \// { print $1, $3 }' | while read -r name path; do
    [[ $name =~ $skip ]] && continue
    [[ -e $out/lib/$name ]] || cp -L "$path" "$out/lib/$name"
  done
  patchelf --set-rpath '$ORIGIN/../lib:$ORIGIN' "$out/bin/$(basename "$program")"
done
strip --strip-debug "$out"/bin/* "$out"/lib/* 2>/dev/null || true
