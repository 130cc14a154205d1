#!/usr/bin/env bash
# check-bundle.sh OUT: proves that a folder bundle.sh made works where it is. No library that a
# program or library in it needs is missing, every library OUT/lib carries is loaded from there
# (by the programs and by the libraries themselves: one found in the system instead, or not at
# all, is what a missing RUNPATH does), and every program starts (--help) with all its symbols
# bound at once (LD_BIND_NOW: a CUDA, cuDNN or NCCL lacking a function the programs call fails
# here, not in a job). The image runs it in the build stage, where the system has a copy of
# every bundled library too, and in the final stage, on the runtime image's own libraries.
set -euo pipefail
out=$(readlink -f "$1")
bad=0
is_elf() { [[ $(head -c 4 "$1") == $'\x7fELF' ]]; }
for f in "$out"/bin/* "$out"/lib/*; do
  is_elf "$f" || continue # mimo-node is a script
  while read -r name path; do
    if [[ $path == not ]]; then
      echo "check-bundle.sh: ${f#"$out"/}: $name not found" >&2
      bad=1
    elif [[ -e $out/lib/$name && $(readlink -f "$path") != "$out/lib/$name" ]]; then
      echo "check-bundle.sh: ${f#"$out"/}: $name loaded from $path, not from $out/lib" >&2
      bad=1
    fi
  done < <(ldd "$f" | awk '$2 == "=>" { print $1, $3 }')
done
for f in "$out"/bin/*; do
  if [[ $f == *.so || ! -x $f ]] || ! is_elf "$f"; then continue; fi
  if ! LD_BIND_NOW=1 "$f" --help >/dev/null; then
    echo "check-bundle.sh: ${f#"$out"/} --help failed" >&2
    bad=1
  fi
done
((bad == 0)) && echo "check-bundle.sh: $out: every library resolves, every program starts"
exit "$bad"
