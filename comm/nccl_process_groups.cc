// ProcessGroups::CreateNccl: every group of a rank's plan as an NCCL communicator.
#include <algorithm>

#include "comm/nccl_communicator.h"
#include "comm/process_groups.h"
#include "common/status_macros.h"

namespace mimo::comm {

absl::StatusOr<std::unique_ptr<ProcessGroups>> ProcessGroups::CreateNccl(
    const std::vector<GroupSpec>& groups, KeyValueStore& store,
    const ProcessGroupsOptions& options) {
  MIMO_RETURN_IF_ERROR(CheckSpecs(groups, options));
  auto result = std::make_unique<ProcessGroups>();
  result->groups_ = groups;
  for (const GroupSpec& group : groups) {
    const int group_rank =
        static_cast<int>(std::find(group.members.begin(), group.members.end(), options.rank) -
                         group.members.begin());
    // One-member groups too: the local communicator copies host memory, and these buffers live
    // on the device.
    MIMO_ASSIGN_OR_RETURN(result->comms_[group.kind],
                          NcclCommunicator::Connect(group.kind, group.members, group_rank, store,
                                                    options.cuda_device, options.timeout));
  }
  return result;
}

}  // namespace mimo::comm
