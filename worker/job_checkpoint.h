// A KIND_TRAIN job's checkpoints (spec.checkpointing): where a rank resumes from, and a save of
// every rank's state (Trainer::SaveState) into one checkpoint folder that global rank 0 commits
// (checkpoint/checkpoint_dir.h) once every rank has written, with a metadata.json of the job's
// layout; the ranks meet through the attempt's key-value store.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "checkpoint/safetensors.h"
#include "comm/key_value_store.h"
#include "mimo/v1/job.pb.h"
#include "mimo/v1/worker_service.pb.h"
#include "nlohmann/json.hpp"
#include "worker/trainer.h"

namespace mimo::worker {

// The job's layout in the conversion grammar, one component per module in plan order:
// "vision=tp=1,pp=1,dp=2,cp=1,ep=1,etp=1,rank_offset=0 language=...".
std::string LayoutOf(const google::protobuf::RepeatedPtrField<v1::ModulePlan>& modules);

// A checkpoint's metadata.json: format, iteration, consumed samples, world size, the layout
// (LayoutOf), each module's plan and spec, the whole job spec (proto JSON mapping, field
// names as in the proto) and `files` ({file: {"bytes", "crc32c"}} of every rank's files).
nlohmann::json CheckpointMetadata(const v1::JobSpec& spec,
                                  const google::protobuf::RepeatedPtrField<v1::ModulePlan>& plans,
                                  int64_t iteration, int64_t consumed_samples,
                                  const nlohmann::json& files);
// Writes `metadata` as `staging`/metadata.json, fsynced.
absl::Status WriteCheckpointMetadata(const std::string& staging, const nlohmann::json& metadata);

struct ResumePoint {
  std::string dir;        // The checkpoint folder (iter_NNNNNNN).
  int64_t iteration = 0;  // The job's iterations done when it was saved.
  // Every rank's files as metadata.json records them (file name -> size and CRC-32C).
  std::map<std::string, checkpoint::FileDigest> files;
};

// Checks rank `rank`'s two files against the digests metadata.json records: DataLoss naming
// the file when it is missing from the record, of another size or CRC-32C.
absl::Status VerifyRankFiles(const ResumePoint& resume, int rank);

// Makes spec.checkpointing.dir (when set) and proves that this rank can write in it: a file
// created there and removed. A folder that cannot hold the checkpoints (a plain file on its path,
// no permission, a read-only mount) thus fails the job at its start, naming the folder, instead of
// at its first save hours later. FailedPrecondition.
absl::Status CheckCheckpointDirWritable(const v1::JobSpec& spec, int rank);

// Where this job resumes: the latest checkpoint under spec.checkpointing.dir (the run's own
// progress: a restarted attempt, or the job submitted again), else resume_from (a folder of
// another run, say; "latest" is the same as empty); nullopt for a fresh start.
// FailedPrecondition when the checkpoint's metadata.json names another layout or world size
// (a reshard is needed) or an iteration beyond training.steps, DataLoss/NotFound when it is
// missing or damaged.
absl::StatusOr<std::optional<ResumePoint>> FindResumePoint(const v1::Assignment& assignment);

// FindResumePoint as every rank of the job agrees: global rank 0 finds it and publishes the
// folder through `store`; the others read that folder (NotFound when they cannot: a folder not
// shared by every host), so no rank starts afresh while another resumes. One rank: no store.
absl::StatusOr<std::optional<ResumePoint>> AgreeOnResumePoint(const v1::Assignment& assignment,
                                                              comm::KeyValueStore* store,
                                                              absl::Duration timeout);

// Writes this rank's files into a checkpoint's staging folder (Trainer::SaveState, or
// WriteRankState of a captured state); returns each file's digest by file name.
using RankStateWriter = std::function<absl::StatusOr<std::map<std::string, checkpoint::FileDigest>>(
    const std::string& staging)>;

// Saves iteration `iteration` of every rank: global rank 0 prepares the staging folder, every
// rank writes its state into it with `write` and says so in `store`, rank 0 waits for all of
// them (up to `timeout`), writes metadata.json (with every rank's files' sizes and CRC-32Cs and
// `consumed_samples`) and commits (keeping spec.checkpointing.keep_last; an older checkpoint that
// cannot be removed is a warning on stderr, not a failure). Every rank of the job
// calls it after the same iteration (from any thread: an asynchronous save's); the others go
// on once they have written. A rank whose part fails (rank 0's staging folder, another's files)
// says so in `store` too, so that the ranks waiting for it fail at once with an error naming it
// rather than at the timeout.
absl::Status SaveJobCheckpoint(const v1::Assignment& assignment, int64_t iteration,
                               int64_t consumed_samples, const RankStateWriter& write,
                               comm::KeyValueStore* store, absl::Duration timeout);

}  // namespace mimo::worker
