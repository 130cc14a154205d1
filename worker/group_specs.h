// The process groups a rank builds: the non-empty groups of its assignment, in the global kind
// order, then its links to other modules.
#pragma once

#include <vector>

#include "absl/status/statusor.h"
#include "comm/process_groups.h"
#include "mimo/v1/job.pb.h"

namespace mimo::worker {

// The rank's non-empty groups ordered by kind as parallel::GroupKind lists them (tp, cp, dp, pp,
// dp_cp, tp_cp, tp_pp, tp_dp_cp, tp_cp_dp_pp, embd, pos_embd, ep, expt_tp, expt_dp, expt_tp_ep,
// expt_tp_ep_pp). Every rank must connect its groups in one global order: Gloo's rendezvous of
// a group blocks until all its members reach it, so two ranks taking shared groups in different
// orders would wait on each other forever. (The assignment's map has no order of its own.)
// Then the rank's links to other modules (kind "link_...", members {encoder rank, language rank}:
// the link's group rank 0 is the encoder end) in the assignment's order.
// InvalidArgument for a kind this worker does not know (its place in the order is unknown), or a
// group or link that does not contain the rank.
absl::StatusOr<std::vector<comm::GroupSpec>> GroupSpecsOf(const v1::RankAssignment& rank);

}  // namespace mimo::worker
