// The step-level side of MoE load balancing: every MoE layer's per-expert load of the step,
// summed over the ranks that share the routers, reported as metrics and fed to the layers'
// aux-loss-free bias updates (Megatron's _update_router_expert_bias after the optimizer step).
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "comm/communicator.h"
#include "kernels/ops.h"
#include "mimo/moe_layer.h"

namespace mimo {

// layers[i]'s per-expert load (E_i counts) of the step, summed over `group`.
using ExpertLoads = std::vector<std::vector<int64_t>>;

// Takes every layer's load (MoeLayer::TakeExpertLoad, which restarts its count), sums them over
// each of `groups` in turn, one all-reduce each (null entries and groups of one skipped) -- the
// ranks whose tokens the same routers route, Megatron's tp x dp x cp group of the module, e.g.
// dp then tp -- and, for the layers configured with expert_bias, moves the bias towards balance
// (MoeLayer::UpdateExpertBias). Returns the summed loads, for metrics. Collective over the
// groups: every member calls it once per step with its layers in the same order. `ops` must be
// the layers' ops and work where the groups do.
absl::StatusOr<ExpertLoads> FinishExpertLoadStep(kernels::Ops& ops,
                                                 absl::Span<MoeLayer* const> layers,
                                                 absl::Span<comm::Communicator* const> groups);

}  // namespace mimo
