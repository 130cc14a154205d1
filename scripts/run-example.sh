#!/usr/bin/env bash
# The main job, for now: installs what is missing, builds, and plans the bundled example MIMO
# layout (8 ranks: vision encoder tp=2 on ranks 0-1, audio encoder dp=2 on ranks 2-3, MoE
# language model tp=2 dp=2 ep=2 on ranks 4-7), printing every rank's place, groups and seeds.
# Extra arguments go to `mimoctl plan`, e.g. --json.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh >&2
exec "${MIMO_BUILD_DIR:-build}/bin/mimoctl" plan --world 8 \
  --component vision=tp=2,dp=1,rank_offset=0 \
  --component audio=dp=2,rank_offset=2 \
  --component language=tp=2,dp=2,ep=2,rank_offset=4 \
  "$@"
