#!/usr/bin/env bash
# Checkpoints end to end through the real programs: the main example (8 CPU workers; encoders
# dp 2, MoE language model dp 4 with ep, the distributed optimizer) trained 6 steps saving every
# 3 (run A), then 3 steps saving at the end (run B) and the same spec with 6 steps (run C), which
# resumes from B's iteration 3. C's job_losses at steps 4-6 must equal A's exactly; the checkpoint
# folders, metadata.json and the latest pointer must be as Megatron names them; resume_from
# starts a new dir from another run's checkpoint, after which the dir's own latest wins; keep_last
# prunes; asynchronous saves hold the same state; a spec whose layout differs from a
# checkpoint's fails with an error naming both layouts and the reshard command.
# mimo-convert inspects the checkpoints, verifies the resumed run's last one equal to A's and
# exports A's per module.
#   checkpoint_resume_test.sh MIMO_COORDINATOR MIMO_WORKER MIMOCTL SOURCE_DIR MIMO_CONVERT
set -euo pipefail

if [[ $# -ne 5 ]]; then
  echo "usage: $0 MIMO_COORDINATOR MIMO_WORKER MIMOCTL SOURCE_DIR MIMO_CONVERT" >&2
  exit 2
fi
coordinator_bin=$1 worker_bin=$2 mimoctl_bin=$3 source_dir=$4 convert_bin=$5
example=$source_dir/examples/mimo-cpu-8.yaml
name=checkpoint-resume

tmp=$(mktemp -d -t mimo-checkpoint-resume.XXXXXX)
# shellcheck source=job_lib.sh
source "$(dirname "$0")/job_lib.sh"
start_watchdog 120
coordinator_pid=""

log() { echo "[$name $(date +%T)] $*" >&2; }
cleanup() { embedded_cleanup; }
trap_cleanup

ctl() { "$mimoctl_bin" "$@"; }

# spec RUN STEPS CHECKPOINT_DIR INTERVAL [DP]: the example with its schedule fixed (so that it does
# not depend on the steps), logging every step, writing to $tmp/RUN.
spec() {
  local file=$tmp/$1.yaml
  sed -e "s|^name: .*|name: $name-$1|" \
    -e "s|^  steps: .*|  steps: $2|" \
    -e "s|^    warmup_steps: .*|    warmup_steps: 2|" \
    -e "s|^    decay_steps: .*|    decay_steps: 10|" \
    -e "s|^  log_interval: .*|  log_interval: 1|" \
    -e "s|^output_dir: .*|output_dir: $tmp/$1|" "$example" >"$file"
  printf 'checkpointing:\n  dir: %s\n  interval_steps: %s\n' "$3" "$4" >>"$file"
  grep -qF "steps: $2" "$file" || fail "the test's spec $file has no 'steps: $2'"
  echo "$file"
}

start_embedded_coordinator 8
run_job "$(spec a 6 "$tmp/ckpt-a" 3)" JOB_STATE_SUCCEEDED >/dev/null
for want in iter_0000003 iter_0000006; do
  [[ -d $tmp/ckpt-a/$want ]] || fail "run A left no $tmp/ckpt-a/$want: $(ls "$tmp/ckpt-a")"
done
[[ $(cat "$tmp/ckpt-a/latest_checkpointed_iteration.txt") == 6 ]] || fail "latest is not 6"
files=$(find "$tmp/ckpt-a/iter_0000006" -name '*_rank_*.safetensors' | wc -l)
[[ $files == 16 ]] || fail "iter_0000006 holds $files rank files, expected 16 (model and optim x 8)"
grep -q '"layout": "vision=tp=1,pp=1,dp=2' "$tmp/ckpt-a/iter_0000006/metadata.json" ||
  fail "metadata.json does not record the layout: $(cat "$tmp/ckpt-a/iter_0000006/metadata.json")"

run_job "$(spec b 3 "$tmp/ckpt-b" 0)" JOB_STATE_SUCCEEDED >/dev/null
[[ -d $tmp/ckpt-b/iter_0000003 ]] || fail "run B left no iter_0000003"
job=$(run_job "$(spec c 6 "$tmp/ckpt-b" 0)" JOB_STATE_SUCCEEDED)
# (The logs into a file first: grep -q stopping early would fail the pipe under pipefail.)
ctl logs "$job" >"$tmp/c.log"
grep -q "resumed from $tmp/ckpt-b/iter_0000003 after iteration 3" "$tmp/c.log" ||
  fail "job $job did not log its resume from iteration 3"
want=$(job_losses a | sed -n '4,6p')
got=$(job_losses c)
[[ $got == "$want" ]] || fail "the resumed run's losses differ: got
$got
want
$want"
log "steps 4-6 after resuming from iteration 3: $(echo "$got" | tr '\n' ';')"
"$convert_bin" inspect "$tmp/ckpt-b/iter_0000006" >"$tmp/inspect.out" ||
  fail "mimo-convert inspect failed: $(cat "$tmp/inspect.out")"
grep -q "crc32c ok" "$tmp/inspect.out" || fail "inspect checked no file: $(head "$tmp/inspect.out")"
"$convert_bin" verify "$tmp/ckpt-a/iter_0000006" "$tmp/ckpt-b/iter_0000006" ||
  fail "the resumed run's weights after step 6 differ from the uninterrupted run's"
"$convert_bin" export --from "$tmp/ckpt-a/iter_0000006" --to "$tmp/export" >/dev/null ||
  fail "mimo-convert export failed"
for module in vision audio language; do
  for file in model.safetensors.index.json config.json model-00001-of-00001.safetensors; do
    [[ -s $tmp/export/$module/$file ]] || fail "the export has no $module/$file"
  done
done
grep -q '"vocab_size"' "$tmp/export/language/config.json" ||
  fail "the export's language config.json holds no spec: $(cat "$tmp/export/language/config.json")"

# resume_from another run's checkpoint into a new dir, saving every step, keeping 2: E resumes
# from A's iteration 3 (the same losses); F, the same spec with 7 steps, resumes from E's own
# latest (iteration 6), not from resume_from.
# E saves asynchronously (the files written while the next steps run).
spec_e=$(spec e 6 "$tmp/ckpt-e" 1)
printf '  keep_last: 2\n  resume_from: %s\n  async_save: true\n' "$tmp/ckpt-a/iter_0000003" \
  >>"$spec_e"
job=$(run_job "$spec_e" JOB_STATE_SUCCEEDED)
[[ $(job_losses e) == "$want" ]] || fail "run E (resumed from A's iteration 3) has other losses: $(job_losses e)"
ctl logs "$job" >"$tmp/e.log"
grep -q "saved checkpoint $tmp/ckpt-e/iter_0000006 (in the background)" "$tmp/e.log" ||
  fail "job $job logged no background save of iteration 6"
"$convert_bin" verify "$tmp/ckpt-a/iter_0000006" "$tmp/ckpt-e/iter_0000006" >/dev/null ||
  fail "run E's asynchronously saved iteration 6 differs from run A's"
kept=$(cd "$tmp/ckpt-e" && echo iter_*)
[[ $kept == "iter_0000005 iter_0000006" ]] || fail "keep_last 2 kept $kept"
spec_f=$(spec f 7 "$tmp/ckpt-e" 1)
printf '  keep_last: 2\n  resume_from: %s\n' "$tmp/ckpt-a/iter_0000003" >>"$spec_f"
job=$(run_job "$spec_f" JOB_STATE_SUCCEEDED)
ctl logs "$job" >"$tmp/f.log"
grep -q "resumed from $tmp/ckpt-e/iter_0000006 after iteration 6" "$tmp/f.log" ||
  fail "job $job did not resume from its own latest checkpoint"
[[ $(job_losses f | cut -d' ' -f1) == 7 ]] || fail "run F ran steps $(job_losses f | cut -d' ' -f1 | tr '\n' ' ')"

# Another layout (the language model's ep 2 -> 1): refused, naming both layouts.
other=$(spec d 6 "$tmp/ckpt-b" 0)
sed -i 's/{dp: 4, ep: 2, rank_offset: 4}/{dp: 4, ep: 1, rank_offset: 4}/; s/^max_restarts: .*/max_restarts: 0/' "$other"
grep -qF '{dp: 4, ep: 1, rank_offset: 4}' "$other" || fail "$other: the layout was not changed"
grep -qF 'max_restarts: 0' "$other" || fail "$other: max_restarts was not set to 0"
job=$(run_job "$other" JOB_STATE_FAILED)
ctl logs "$job" >"$tmp/d.log"
grep -q "or reshard it to this one (mimo-convert reshard --from" "$tmp/d.log" ||
  { ctl logs "$job" --tail 20 >&2; fail "job $job failed without naming the layouts"; }
echo "$name: PASSED"
