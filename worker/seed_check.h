// The seed properties of docs/layout.md, checked on what the ranks of one group hold.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "mimo/v1/job.pb.h"

namespace mimo::worker {

// What a rank holds that its seeds depend on: the seeds and the coordinates of Megatron's
// formula (docs/layout.md, "Seeds and RNG streams").
struct SeedRecord {
  int rank = -1;
  int64_t base = 0;
  int64_t tensor_parallel = 0;
  int64_t data_parallel = 0;
  std::optional<int64_t> expert;  // Language ranks only.
  int tp = 0, dp = 0, pp = 0;     // Dense coordinates.
  int ep = 0, expt_tp = 0;        // Expert coordinates (language ranks).

  // Fixed-size int64 form, all-gathered over a group.
  static constexpr int kPackedSize = 11;
  std::array<int64_t, kPackedSize> Pack() const;
  static SeedRecord Unpack(absl::Span<const int64_t> packed);
};

// The record of `rank`.
SeedRecord SeedRecordOf(const v1::RankAssignment& rank);

// The job seed Megatron's formula starts from: training.seed, 0 meaning 1234.
int64_t JobSeed(const v1::JobSpec& spec);

// This rank's seeds against Megatron's formula for its coordinates:
//   base            = seed + 100*pp (+ 10*dp with data_parallel_random_init)
//   tensor_parallel = base + 2718 + tp
//   data_parallel   = base
//   expert          = base + 1024 + 100*ep + expt_tp    (language ranks; absent on encoders)
// FailedPrecondition naming the rank, the seed, the value held and the value expected.
absl::Status CheckOwnSeeds(const v1::RankAssignment& rank, int64_t job_seed,
                           bool data_parallel_random_init);

// The cross-rank properties over the members of one group (`records` in member order). Two
// ranks are in the same scope when they share the pipeline stage and, with
// data_parallel_random_init, the dp rank. Then:
//   - data_parallel (= base) seeds are equal;
//   - tensor_parallel seeds are equal exactly when the tp ranks are;
//   - expert seeds are equal exactly when (ep, expt_tp) are: different expert shards never share
//     a seed, expert-data-parallel replicas always do.
// Across scopes, where Megatron's values may coincide, only what the formula guarantees:
//   - data_parallel seeds differ between ranks of different stages and the same dp rank
//     (without random init: of different stages, whatever their dp rank);
//   - with random init, data_parallel seeds differ between dp ranks of the same stage.
// Every member must be of one module (all with or all without an expert seed). Returns the first
// violation, naming the group ("dp [2,3]"), both ranks, their coordinates and seeds.
absl::Status CheckGroupSeeds(absl::string_view kind, absl::Span<const int> members,
                             const std::vector<SeedRecord>& records,
                             bool data_parallel_random_init);

// "tp [4,5]".
std::string DescribeGroup(absl::string_view kind, absl::Span<const int> members);

}  // namespace mimo::worker
