// Token dropping for MoE experts with a capacity (Megatron's moe_expert_capacity_factor): each
// expert keeps at most `capacity` of the (token, choice) pairs routed to it -- those with the
// highest router weights, or the earliest -- and the others go nowhere (expert -1).
#pragma once

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "kernels/allocator.h"

namespace mimo::kernels {

enum class TokenDropPolicy {
  kProbs,     // Keep each expert's pairs of highest weight (ties: the earlier pair).
  kPosition,  // Keep each expert's earliest pairs (token order, then choice order).
};

// Megatron's get_capacity over tokens * top_k pairs: max(min_capacity,
// ceil(tokens * top_k / experts * factor)); factor > 0.
int64_t MoeExpertCapacity(int64_t tokens, int64_t top_k, int64_t experts, double factor,
                          int64_t min_capacity = 4);

// kept[i] = indices[i], or -1 when pair i is not among the first `capacity` of its expert by
// `policy`. Pairs already at -1 stay there and take no room.
struct MoeCapacityDropParams {
  TokenDropPolicy policy = TokenDropPolicy::kProbs;
  const int32_t* indices = nullptr;  // (tokens, top_k): experts in [0, experts), or -1.
  const float* probs = nullptr;      // (tokens, top_k): the router's weights (kProbs only).
  int32_t* kept = nullptr;           // (tokens, top_k); may not overlap indices.
  int64_t tokens = 0;
  int64_t top_k = 0;     // >= 1
  int64_t experts = 0;   // In [1, 1024].
  int64_t capacity = 0;  // >= 0
  // CUDA only: scratch of at least MoeCapacityDropWorkspaceBytes(tokens * top_k, experts).
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
};

absl::Status CheckMoeCapacityDrop(const MoeCapacityDropParams& p);

// CPU twin: host memory; rejects an expert index out of range (other than -1).
absl::Status MoeCapacityDropCpu(const MoeCapacityDropParams& p);

// CUDA: device memory, enqueued on `stream` (a cudaStream_t) with no host synchronization (the
// pairs grouped by expert as MoePermuteMap does; for kProbs a stable radix sort by expert and
// weight); equal to the CPU twin. Out-of-range expert indices are treated as -1.
size_t MoeCapacityDropWorkspaceBytes(int64_t pairs, int64_t experts);
absl::Status LaunchMoeCapacityDrop(const MoeCapacityDropParams& p, StreamHandle stream);

}  // namespace mimo::kernels
