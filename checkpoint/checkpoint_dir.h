// The folders of a run's checkpoints and how one is committed atomically: every rank writes its
// files into a staging folder, then one rank fsyncs it, renames it to the step's folder and
// points `latest_checkpointed_iteration.txt` (Megatron's names) at it, last. A save that dies
// before the rename leaves only a staging folder, which nothing loads and the next save clears.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace mimo::checkpoint {

// "<root>/iter_0000100": step 100's checkpoint (7 digits, more when the step needs them).
std::string CheckpointDir(const std::string& root, int64_t step);
// "<root>/.iter_0000100.staging": where step 100's files are written before the commit.
std::string StagingDir(const std::string& root, int64_t step);
// "<root>/latest_checkpointed_iteration.txt": the step of the newest committed checkpoint.
std::string LatestFile(const std::string& root);

// One rank, before any rank writes: creates `root` (and parents) if needed and an empty staging
// folder for `step`; returns its path. What earlier saves left is removed first, as far as it
// can be (what cannot is left for the next save): staging folders of earlier steps' saves that
// died, old checkpoints set aside by retention but not removed, and a replaced checkpoint whose
// successor is in place. The latest checkpoint's replaced copy, when its successor is not in
// place (the commit died between its renames), is renamed back first; other replaced copies
// without a successor (a removal that stopped half-way) are removed.
absl::StatusOr<std::string> PrepareStaging(const std::string& root, int64_t step);

// One rank, after every rank has written and fsynced its files into the staging folder: fsyncs
// the folder, renames it to CheckpointDir (replacing a checkpoint of the same step), fsyncs
// `root`, then writes LatestFile (a temporary file fsynced and renamed over it, `root` fsynced
// again). Then, with keep > 0, removes the oldest committed checkpoints beyond the newest
// `keep` (never the latest): each renamed aside, then removed; one that cannot be removed is
// left (aside when the rename worked) and its error appended to `not_removed`, the commit
// standing. FailedPrecondition when the staging folder does not exist.
absl::Status CommitCheckpoint(const std::string& root, int64_t step, int keep = 0,
                              std::vector<std::string>* not_removed = nullptr);

// The steps of the committed checkpoints under `root`, ascending (staging folders and other
// entries ignored); empty when `root` does not exist.
absl::StatusOr<std::vector<int64_t>> ListCheckpoints(const std::string& root);

// The step LatestFile names, or nullopt when there is none (a run that never saved). Changes
// nothing, so any rank or tool may call it while a run saves (though the run's next commit or
// save may then move or remove the folder it names). DataLoss when the file is not a
// step number or names a checkpoint that does not exist (neither its folder nor, after a commit
// that died while replacing it, its aside copy).
absl::StatusOr<std::optional<int64_t>> LatestCheckpoint(const std::string& root);

// The folder that holds step's committed checkpoint: CheckpointDir, or the old copy a commit
// that died between its two renames left aside ("<dir>.replaced", whole; the next save of the
// run, in PrepareStaging, renames it back).
std::string CommittedCheckpointFolder(const std::string& root, int64_t step);

}  // namespace mimo::checkpoint
