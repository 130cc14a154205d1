// A KIND_TRAIN job's checkpoints (spec.checkpointing): where a rank resumes from, and a save of
// every rank's state (Trainer::SaveState) into one checkpoint folder that global rank 0 commits
// (checkpoint/checkpoint_dir.h) once every rank has written, with a metadata.json of the job's
// layout; the ranks meet through the attempt's key-value store.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "comm/key_value_store.h"
#include "mimo/v1/job.pb.h"
#include "mimo/v1/worker_service.pb.h"
#include "worker/trainer.h"

namespace mimo::worker {

// The job's layout in the conversion grammar, one component per module in plan order:
// "vision=tp=1,pp=1,dp=2,cp=1,ep=1,etp=1,rank_offset=0 language=...".
std::string LayoutOf(const v1::Assignment& assignment);

struct ResumePoint {
  std::string dir;        // The checkpoint folder (iter_NNNNNNN).
  int64_t iteration = 0;  // The job's iterations done when it was saved.
};

// Where this job resumes: spec.checkpointing.resume_from (a folder, or "latest" under dir), or,
// when empty, the latest checkpoint under dir; nullopt when there is none (a fresh start).
// FailedPrecondition when the checkpoint's metadata.json names another layout or world size
// (a reshard is needed), DataLoss/NotFound when it is missing or damaged.
absl::StatusOr<std::optional<ResumePoint>> FindResumePoint(const v1::Assignment& assignment);

// Saves iteration `iteration` of every rank: global rank 0 prepares the staging folder, every
// rank writes its state into it and says so in `store`, rank 0 waits for all of them (up to
// `timeout`), writes metadata.json and commits (keeping spec.checkpointing.keep_last). Every
// rank of the job calls it after the same iteration; the others go on once they have written.
absl::Status SaveJobCheckpoint(const v1::Assignment& assignment, const Trainer& trainer,
                               int64_t iteration, comm::KeyValueStore* store,
                               absl::Duration timeout);

}  // namespace mimo::worker
