// One communicator for every process group of a rank's plan.
#include "comm/process_groups.h"

#include <algorithm>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "comm/gloo_communicator.h"
#include "comm/local_communicator.h"
#include "common/status_macros.h"

namespace mimo::comm {
// Every problem with the specs is found before any connection is attempted: a bad spec on one
// rank would otherwise leave its peers waiting out the timeout.
absl::Status ProcessGroups::CheckSpecs(const std::vector<GroupSpec>& groups,
                                       const ProcessGroupsOptions& options) {
  const int rank = options.rank;
  if (rank < 0) return absl::InvalidArgumentError(absl::StrCat("rank ", rank, " is negative"));
  if (options.timeout < absl::Milliseconds(1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("timeout ", absl::FormatDuration(options.timeout), " is under 1ms"));
  }
  std::set<std::string> kinds;
  for (const GroupSpec& group : groups) {
    const std::string name =
        absl::StrCat("group ", group.kind, " [", absl::StrJoin(group.members, ","), "]");
    if (group.kind.empty()) return absl::InvalidArgumentError(absl::StrCat(name, " has no kind"));
    if (!kinds.insert(group.kind).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("group kind ", group.kind, " is listed twice"));
    }
    if (group.members.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(name, " has no members"));
    }
    std::set<int> seen;
    for (int member : group.members) {
      if (member < 0 || !seen.insert(member).second) {
        return absl::InvalidArgumentError(
            absl::StrCat(name, ": members must be distinct non-negative ranks"));
      }
    }
    if (!seen.contains(rank)) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, " does not contain this process's rank ", rank));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<ProcessGroups>> ProcessGroups::CreateGloo(
    const std::vector<GroupSpec>& groups, KeyValueStore& store,
    const ProcessGroupsOptions& options) {
  MIMO_RETURN_IF_ERROR(CheckSpecs(groups, options));
  auto result = std::make_unique<ProcessGroups>();
  result->groups_ = groups;
  // One device (listening address and I/O thread) serves every group; none when all are local.
  std::shared_ptr<gloo::transport::Device> device;
  for (const GroupSpec& group : groups) {
    const int group_rank =
        static_cast<int>(std::find(group.members.begin(), group.members.end(), options.rank) -
                         group.members.begin());
    if (group.members.size() == 1) {
      result->comms_[group.kind] = std::make_unique<LocalCommunicator>(group.kind, options.rank);
      continue;
    }
    if (device == nullptr) {
      MIMO_ASSIGN_OR_RETURN(device, GlooCommunicator::CreateTcpDevice(options.hostname));
    }
    MIMO_ASSIGN_OR_RETURN(result->comms_[group.kind],
                          GlooCommunicator::Connect(group.kind, group.members, group_rank, store,
                                                    device, options.timeout));
  }
  return result;
}

Communicator* ProcessGroups::Get(const std::string& kind) const {
  auto it = comms_.find(kind);
  return it == comms_.end() ? nullptr : it->second.get();
}

void ProcessGroups::AbortAll() {
  for (auto& [kind, comm] : comms_) comm->Abort();
}

}  // namespace mimo::comm
