#!/usr/bin/env bash
# Resharding end to end through the real programs. The main example's model (with 4 query
# groups, so that tp 4 divides its heads) is trained 6 steps by 8 CPU workers saving at step 3
# (run A, the example's layout: encoders dp 2, language dp 4 ep 2). A's iteration 3 is resharded
# along chains -- language tp 2 -> 1 -> 4, ep 1 -> 2 -> 4 (with the vision encoder cp 2 at ep 4),
# pp 2 -> 1, the encoders moved after the language model -- each step verified tensor by tensor (parameters and optimizer state) against
# A's; then jobs in the new layouts resume from them and their steps 4-6 must have A's losses
# (within 1e-5 relative: only the order of sums differs). Also: --dry-run writes nothing and names
# the source files, bad layouts fail with the planner's errors before writing, an existing target
# needs --overwrite, and an export imported into another layout holds A's weights and trains.
#   reshard_resume_test.sh MIMO_COORDINATOR MIMO_WORKER MIMOCTL SOURCE_DIR MIMO_CONVERT
set -euo pipefail

if [[ $# -ne 5 ]]; then
  echo "usage: $0 MIMO_COORDINATOR MIMO_WORKER MIMOCTL SOURCE_DIR MIMO_CONVERT" >&2
  exit 2
fi
coordinator_bin=$1 worker_bin=$2 mimoctl_bin=$3 source_dir=$4 convert_bin=$5
example=$source_dir/examples/mimo-cpu-8.yaml
name=reshard-resume

tmp=$(mktemp -d -t mimo-reshard-resume.XXXXXX)
# shellcheck source=job_lib.sh
source "$(dirname "$0")/job_lib.sh"
start_watchdog 140
coordinator_pid=""

log() { echo "[$name $(date +%T)] $*" >&2; }
cleanup() { embedded_cleanup; }
trap_cleanup

ctl() { "$mimoctl_bin" "$@"; }
convert() { "$convert_bin" "$@"; }

# The layouts, as spec lines (vision, audio, language) and as mimo-convert components.
declare -A vision audio language
layout() { vision[$1]=$2 audio[$1]=$3 language[$1]=$4; }
layout a "{dp: 2, rank_offset: 0}" "{dp: 2, rank_offset: 2}" "{dp: 4, ep: 2, rank_offset: 4}"
layout t2 "{dp: 2, rank_offset: 0}" "{dp: 2, rank_offset: 2}" "{tp: 2, dp: 2, ep: 2, rank_offset: 4}"
layout t1 "{dp: 2, rank_offset: 0}" "{dp: 2, rank_offset: 2}" "{dp: 4, ep: 1, rank_offset: 4}"
layout t4 "{dp: 2, rank_offset: 0}" "{dp: 2, rank_offset: 2}" "{tp: 4, dp: 1, rank_offset: 4}"
layout e4 "{cp: 2, dp: 1, rank_offset: 0}" "{dp: 2, rank_offset: 2}" "{dp: 4, ep: 4, rank_offset: 4}"
layout p2 "{dp: 2, rank_offset: 0}" "{dp: 2, rank_offset: 2}" "{pp: 2, dp: 2, ep: 2, rank_offset: 4}"
layout p1 "{dp: 2, rank_offset: 0}" "{dp: 2, rank_offset: 2}" "{dp: 4, ep: 2, rank_offset: 4}"
layout moved "{dp: 2, rank_offset: 4}" "{dp: 2, rank_offset: 6}" "{dp: 4, ep: 4, rank_offset: 0}"

# components LAYOUT: the --component flags of a layout ("{tp: 2, dp: 2}" -> "tp=2,dp=2").
components() {
  local module text
  for module in vision audio language; do
    declare -n table=$module
    text=${table[$1]}
    text=${text//[\{\} ]/}
    echo "--component"
    echo "$module=${text//:/=}"
  done
}

# spec RUN LAYOUT STEPS [CHECKPOINTING...]: the example in LAYOUT with 4 query groups, its
# schedule fixed, logging every step, writing to $tmp/RUN.
spec() {
  local file=$tmp/$1.yaml
  sed -e "s|^name: .*|name: $name-$1|" \
    -e "s|^  steps: .*|  steps: $3|" \
    -e "s|^    warmup_steps: .*|    warmup_steps: 2|" \
    -e "s|^    decay_steps: .*|    decay_steps: 10|" \
    -e "s|^  log_interval: .*|  log_interval: 1|" \
    -e "s|num_query_groups: 2|num_query_groups: 4|" \
    -e "s|^max_restarts: .*|max_restarts: 0|" \
    -e "s|^output_dir: .*|output_dir: $tmp/$1|" "$example" >"$file"
  # The three parallelism lines, in module order.
  awk -v v="${vision[$2]}" -v a="${audio[$2]}" -v l="${language[$2]}" '
    /^    parallelism:/ { n++; sub(/\{.*\}/, n == 1 ? v : n == 2 ? a : l) } { print }' \
    "$file" >"$file.tmp" && mv "$file.tmp" "$file"
  [[ $(grep -c "parallelism: ${language[$2]}" "$file") == 1 ]] || fail "$file: layout $2 not set"
  shift 3
  if [[ $# -gt 0 ]]; then
    printf 'checkpointing:\n' >>"$file"
    printf '  %s\n' "$@" >>"$file"
  fi
  echo "$file"
}

# same_losses RUN: RUN's steps equal A's steps 4-6 within 1e-5 relative.
same_losses() {
  local want got
  want=$(job_losses a | sed -n '4,6p')
  got=$(job_losses "$1")
  paste -d' ' <(echo "$want") <(echo "$got") | awk -v run="$1" '
    { d = $2 - $4; if (d < 0) d = -d; r = d / ($2 < 0 ? -$2 : $2)
      if ($1 != $3 || r > 1e-5) { bad = 1 }
      if (r > worst) worst = r }
    END { printf "%s: steps 4-6 within %.1e of run A\n", run, worst > "/dev/stderr"; exit bad }' ||
    fail "run $1 (resumed from a resharded checkpoint) has other losses:
$got
want (run A)
$want"
}

# reshard FROM TO LAYOUT: reshards FROM's latest into the root TO and verifies it against A's.
reshard() {
  local flags
  mapfile -t flags < <(components "$3")
  convert reshard --from "$1" --to "$2" "${flags[@]}" >"$tmp/reshard.out" 2>&1 ||
    fail "mimo-convert reshard $1 -> $3 failed: $(cat "$tmp/reshard.out")"
  convert verify "$tmp/ckpt-a/iter_0000003" "$2/iter_0000003" >/dev/null ||
    fail "the checkpoint resharded to layout $3 differs from run A's"
  log "$(head -n 2 "$tmp/reshard.out" | tail -n 1 | sed 's/^ *//')"
}

start_embedded_coordinator 8
run_job "$(spec a a 6 "dir: $tmp/ckpt-a" "interval_steps: 3")" JOB_STATE_SUCCEEDED >/dev/null
[[ -d $tmp/ckpt-a/iter_0000003 ]] || fail "run A left no iter_0000003"
cp -r "$tmp/ckpt-a/iter_0000003" "$tmp/a3"  # A's own latest is 6; keep 3 as a folder.

# A dry run names the source files of each target rank and writes nothing.
mapfile -t flags < <(components t2)
convert reshard --from "$tmp/a3" --to "$tmp/dry" "${flags[@]}" --dry-run >"$tmp/dry.out" ||
  fail "the dry run failed: $(cat "$tmp/dry.out")"
[[ ! -e $tmp/dry ]] || fail "the dry run wrote $tmp/dry"
grep -q "rank 5 language tp 1/2 cp 0/1 dp 0/2 pp 0/1 ep 1/2 etp 0/1: .* <- .*model_rank_00004" \
  "$tmp/dry.out" || fail "the dry run does not say what feeds rank 5: $(cat "$tmp/dry.out")"

# Bad layouts: the planner's errors, nothing written.
bad() {
  local want=$1
  shift
  if convert reshard --from "$tmp/a3" --to "$tmp/bad" "$@" >"$tmp/bad.out" 2>&1; then
    fail "reshard $* succeeded"
  fi
  grep -qF -- "$want" "$tmp/bad.out" || fail "reshard $* did not say '$want': $(cat "$tmp/bad.out")"
  [[ ! -e $tmp/bad ]] || fail "the failed reshard $* wrote $tmp/bad"
}
ok_encoders=(--component vision=dp=2,rank_offset=0 --component audio=dp=2,rank_offset=2)
bad "unknown key" "${ok_encoders[@]}" --component language=tp=2,xp=2,rank_offset=4
bad "not an integer" "${ok_encoders[@]}" --component language=tp=two,rank_offset=4
bad "given by two components" "${ok_encoders[@]}" --component vision=dp=2 --component language=dp=4
bad "ep" --component vision=dp=2,ep=2,rank_offset=0 --component audio=dp=2,rank_offset=2 \
  --component language=dp=4,rank_offset=4
bad "has no --component" "${ok_encoders[@]}"
bad "no module \"speech\"" "${ok_encoders[@]}" --component language=dp=4,rank_offset=4 \
  --component speech=dp=1
bad "rank" --component vision=dp=2,rank_offset=0 --component audio=dp=2,rank_offset=1 \
  --component language=dp=4,rank_offset=4
# 0 is "unset" in a job spec: refused, not read as the default.
bad "tp must be >= 1, got 0" "${ok_encoders[@]}" --component language=tp=0,dp=4,rank_offset=4
bad "ep must be >= 1, got 0" "${ok_encoders[@]}" --component language=dp=4,ep=0,rank_offset=4
bad "--world must be >= 0" "${ok_encoders[@]}" --component language=dp=4,rank_offset=4 --world -3

# A damaged source (4 bytes of a rank file's data flipped) is neither resharded nor exported:
# it would leave under fresh checksums.
cp -r "$tmp/a3" "$tmp/a3-bad"
bad_file=$tmp/a3-bad/model_rank_00004.safetensors
size=$(stat -c %s "$bad_file")
printf '\xde\xad\xbe\xef' | dd of="$bad_file" bs=1 seek=$((size - 64)) conv=notrunc status=none
if convert reshard --from "$tmp/a3-bad" --to "$tmp/bad" "${flags[@]}" >"$tmp/bad.out" 2>&1; then
  fail "a reshard of a damaged checkpoint succeeded"
fi
grep -q "model_rank_00004.safetensors has .*the checkpoint is damaged" "$tmp/bad.out" ||
  fail "the damaged reshard did not name the file: $(cat "$tmp/bad.out")"
[[ ! -e $tmp/bad ]] || fail "the damaged reshard wrote $tmp/bad"
if convert export --from "$tmp/a3-bad" --to "$tmp/bad" >"$tmp/bad.out" 2>&1; then
  fail "an export of a damaged checkpoint succeeded"
fi
grep -q "the checkpoint is damaged" "$tmp/bad.out" || fail "export: $(cat "$tmp/bad.out")"
[[ ! -e $tmp/bad ]] || fail "the damaged export wrote $tmp/bad"
# A checkpoint's rank files are not weights to import (their QKV rows are in mimo's order).
if convert import --from "$tmp/a3" --to "$tmp/bad" --spec "$(spec imp a 3 "dir: $tmp/bad")" \
  >"$tmp/bad.out" 2>&1; then
  fail "an import of a checkpoint folder succeeded"
fi
grep -q "is a mimo checkpoint's rank file" "$tmp/bad.out" || fail "import: $(cat "$tmp/bad.out")"
[[ ! -e $tmp/bad ]] || fail "the refused import wrote $tmp/bad"

# The chains, each checkpoint verified against A's.
reshard "$tmp/a3" "$tmp/t2" t2
reshard "$tmp/t2" "$tmp/t1" t1
reshard "$tmp/t1" "$tmp/t4" t4
reshard "$tmp/t1" "$tmp/e2" a
reshard "$tmp/e2" "$tmp/e4" e4
reshard "$tmp/a3" "$tmp/p2" p2
reshard "$tmp/p2" "$tmp/p1" p1
reshard "$tmp/e4" "$tmp/moved" moved
# An existing target needs --overwrite.
if convert reshard --from "$tmp/a3" --to "$tmp/t4" "${flags[@]}" >"$tmp/again.out" 2>&1; then
  fail "a reshard over an existing checkpoint succeeded without --overwrite"
fi
grep -q "without --overwrite" "$tmp/again.out" || fail "no --overwrite hint: $(cat "$tmp/again.out")"
# Also when the target's checkpoint is one a crash left aside mid-commit (a trainer resumes it).
cp -r "$tmp/t2" "$tmp/aside"
mv "$tmp/aside/iter_0000003" "$tmp/aside/iter_0000003.replaced"
if convert reshard --from "$tmp/a3" --to "$tmp/aside" "${flags[@]}" >"$tmp/again.out" 2>&1; then
  fail "a reshard over a checkpoint set aside by a commit succeeded without --overwrite"
fi
grep -q "set aside by a commit.*without --overwrite" "$tmp/again.out" ||
  fail "no --overwrite hint for the aside checkpoint: $(cat "$tmp/again.out")"
[[ -d $tmp/aside/iter_0000003.replaced ]] || fail "the refused reshard touched the aside checkpoint"

# Each new layout resumes with A's losses: from the resharded root as its dir, or (moved) as
# resume_from, saving into a dir of its own.
for run_name in t2 t4 e4 p2 p1; do
  run_job "$(spec "$run_name" "$run_name" 6 "dir: $tmp/$run_name")" JOB_STATE_SUCCEEDED >/dev/null
  same_losses "$run_name"
done
run_job "$(spec moved moved 6 "dir: $tmp/moved-run" "resume_from: $tmp/moved")" JOB_STATE_SUCCEEDED >/dev/null
same_losses moved
[[ -d $tmp/moved-run/iter_0000006 ]] || fail "the moved run saved no iteration 6 in its own dir"

# Export A's iteration 3 and import it into the tp 4 layout: the same weights (fresh optimizer
# state), and a run starts from them (its first loss below a fresh start's).
convert export --from "$tmp/a3" --to "$tmp/export" >/dev/null || fail "export failed"
# What an export that died leaves aside (a hidden folder) is not read by import; a second copy of
# a module's files is refused (which copy to take is not for import to guess).
mkdir -p "$tmp/export/.language.partial"
cp "$tmp/a3/model_rank_00004.safetensors" "$tmp/export/.language.partial/"
cp -r "$tmp/export/language" "$tmp/export/language-copy"
if convert import --from "$tmp/export" --to "$tmp/bad" --spec "$(spec imp a 3 "dir: $tmp/bad")" \
  >"$tmp/bad.out" 2>&1; then
  fail "an import of two copies of a module succeeded"
fi
grep -q "is in both .*more than one export" "$tmp/bad.out" || fail "import: $(cat "$tmp/bad.out")"
[[ ! -e $tmp/bad ]] || fail "the refused import wrote $tmp/bad"
rm -r "$tmp/export/language-copy"
import_spec=$(spec imported t4 3 "dir: $tmp/imported")
convert import --from "$tmp/export" --to "$tmp/imported" --spec "$import_spec" >"$tmp/import.out" ||
  fail "import failed: $(cat "$tmp/import.out")"
convert verify --weights-only "$tmp/a3" "$tmp/imported/iter_0000000" >/dev/null ||
  fail "the imported checkpoint's weights differ from run A's"
run_job "$import_spec" JOB_STATE_SUCCEEDED >/dev/null
first=$(job_losses imported | head -n 1 | cut -d' ' -f2)
fresh=$(job_losses a | head -n 1 | cut -d' ' -f2)
awk -v a="$first" -v b="$fresh" 'BEGIN { exit !(a < b) }' ||
  fail "the imported run's first loss $first is not below a fresh start's $fresh"
log "imported into tp 4: first loss $first (a fresh start's: $fresh)"

# Into a spec that trains in bf16: the export's fp32 weights are converted (rounded to nearest
# even).
bf16_spec=$tmp/imported-bf16.yaml
sed -e 's/precision: PRECISION_FP32/precision: PRECISION_BF16/' "$import_spec" >"$bf16_spec"
grep -q PRECISION_BF16 "$bf16_spec" || fail "$bf16_spec does not train in bf16"
convert import --from "$tmp/export" --to "$tmp/imported-bf16" --spec "$bf16_spec" \
  >"$tmp/import-bf16.out" 2>&1 || fail "import into bf16 failed: $(cat "$tmp/import-bf16.out")"
convert inspect "$tmp/imported-bf16/iter_0000000" >"$tmp/inspect-bf16.out" ||
  fail "inspect of the bf16 import failed"
grep -q 'linear_qkv.weight.*BF16' "$tmp/inspect-bf16.out" ||
  fail "the bf16 import's weights are not BF16: $(grep linear_qkv "$tmp/inspect-bf16.out")"
log "imported into bf16"
echo "$name: PASSED"
