// The KIND_SELFTEST job: every collective on every group of the rank, then the seed properties
// across ranks.
#pragma once

#include <functional>
#include <string>

#include "absl/status/status.h"
#include "comm/collective_check.h"
#include "comm/process_groups.h"
#include "mimo/v1/worker_service.pb.h"

namespace mimo::worker {

// Where the selftest reports its progress: log lines such as "selftest: group tp [4,5] ok". (No
// metrics: a metrics report carries a step and a loss, which a selftest does not have.)
using SelftestLog = std::function<void(const std::string&)>;

// Whether the job was told to stop; checked before every group's collectives.
using SelftestStopped = std::function<bool()>;

// Runs on every rank of the job, with `groups` built by GroupSpecsOf (groups in the global kind
// order, then links: the same order on every rank, so the collectives of different groups never
// wait on each other in a cycle):
//   1. this rank's seeds against Megatron's formula for its coordinates (CheckOwnSeeds);
//   2. comm::CheckCollectives on every group and link (send/recv both ways included), in order,
//      spec.selftest.iterations times (0: once);
//   3. on every group (not the links, which join two modules), each member's seeds and
//      coordinates all-gathered and checked (CheckGroupSeeds).
// `space` says where the communicators' buffers live (device memory for NCCL); null means host
// memory (Gloo). Returns the first failure, naming the group ("selftest: group dp [2,3]: ...").
// Once `stopped` (if given) returns true it returns Cancelled before the next group: aborted
// communicators fail their calls anyway, but a stop must end the job even where none would.
absl::Status RunSelftest(const v1::Assignment& assignment, comm::ProcessGroups& groups,
                         comm::BufferSpace* space, const SelftestLog& log,
                         const SelftestStopped& stopped = nullptr);

}  // namespace mimo::worker
