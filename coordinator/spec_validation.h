// Validates a JobSpec (every field, layout through the planner).
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "mimo/v1/job.pb.h"
#include "mimo/v1/job_spec.pb.h"
#include "parallel/rank_plan.h"

namespace mimo::coordinator {

// The most workers (ranks) one job may ask for. The planner goes to 2^24 ranks, but a
// coordinator keeps a job's plan in memory and serves every rank from it.
inline constexpr int kMaxJobWorkers = 65536;

// One invalid field, with its path in the spec as google.rpc.BadRequest.FieldViolation.field
// expects: "name", "modules[1].parallelism.ep", "training.global_batch_size",
// "resources.workers", "modules" (for layout-wide problems).
struct FieldViolation {
  std::string field;
  std::string description;
};

// "invalid job spec (N problems)", then "field: description" per violation, a line each: the
// message of every refusal of a spec (ValidateJobSpec, the service's INVALID_ARGUMENT, mimoctl).
std::string DescribeViolations(const std::vector<FieldViolation>& violations);

// The planner's input for a spec: every module's parallelism (sizes of 0 mean 1), world size =
// resources.workers, language = the module whose `model` is `language`, seed and
// data_parallel_random_init from `training` (seed 0 means 1234).
parallel::LayoutSpec ToLayoutSpec(const v1::JobSpec& spec);

// Checks everything a job needs before any worker is touched, collecting every problem:
// name syntax; kind set; at least one module, exactly one language module, every module has a
// model; model sizes positive and consistent (hidden divisible by heads, heads by query groups,
// image_size by patch_size, max_frames by frames_per_token, top_k in [1, num_experts] when MoE,
// heads and query groups divisible by tp, experts by ep, ...); for KIND_TRAIN, training (steps >
// 0, batch sizes, global divisible by micro * language dp, seq_length within
// max_sequence_length, optimizer) and a data source; resources (workers in [1, kMaxJobWorkers],
// device set); checkpointing and restarts; and, when there are workers and a language module, the
// layout through parallel::BuildRankPlan, each LayoutViolation mapped to its field path (module
// index
// -> "modules[i].parallelism.<field>" or "modules[i].name", layout-wide -> "modules",
// "resources.workers" or "training.seed") with the planner's message. Returns the plan when
// there are no violations, else InvalidArgument with DescribeViolations' message.
// `violations` (may be null) receives the list, empty on success.
absl::StatusOr<parallel::RankPlan> ValidateJobSpec(const v1::JobSpec& spec,
                                                   std::vector<FieldViolation>* violations);

}  // namespace mimo::coordinator
