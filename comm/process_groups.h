// One communicator for every process group of a rank's plan.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "comm/communicator.h"
#include "comm/key_value_store.h"

namespace mimo::comm {

// A group this rank belongs to: its kind ("tp", "dp", "ep", ..., parallel::GroupKindName) and its
// members as global ranks in enumeration order (the rank's index in `members` is its group rank).
struct GroupSpec {
  std::string kind;
  std::vector<int> members;
};

// Options of ProcessGroups::Create.
struct ProcessGroupsOptions {
  // This process's global rank; must be a member of every group.
  int rank = -1;
  // How long connecting a group, and any later call, may wait for peers.
  absl::Duration timeout = absl::Seconds(60);
  // Gloo: the address this process listens on for its peers ("" = the host name's address).
  std::string hostname;
  // NCCL: the CUDA device (runtime ordinal) every communicator of this process works on.
  int cuda_device = 0;
};

// The communicators of one rank, one per group kind. Groups with one member get a local
// communicator that needs no peers.
class ProcessGroups {
 public:
  // Connects every group in the order given (every rank must list its kinds in the same global
  // order, as the plan does), rendezvousing through `store` under keys prefixed by the kind and
  // the members, so that groups never collide. Fails when a peer does not show up within the
  // timeout.
  static absl::StatusOr<std::unique_ptr<ProcessGroups>> CreateGloo(
      const std::vector<GroupSpec>& groups, KeyValueStore& store,
      const ProcessGroupsOptions& options);

  // The same over NCCL on options.cuda_device (buffers in device memory), every group included:
  // one-member groups get a one-rank NCCL communicator. A member that does not show up within the
  // timeout fails the creation (DeadlineExceeded) instead of hanging it. Defined in the target
  // mimo_comm_nccl, built only with CUDA; only what links that target may call it.
  static absl::StatusOr<std::unique_ptr<ProcessGroups>> CreateNccl(
      const std::vector<GroupSpec>& groups, KeyValueStore& store,
      const ProcessGroupsOptions& options);

  // The communicator of `kind`; null when the rank has no such group.
  Communicator* Get(const std::string& kind) const;
  // Kinds in creation order.
  const std::vector<GroupSpec>& groups() const { return groups_; }
  // Aborts every communicator (see Communicator::Abort).
  void AbortAll();

 private:
  // InvalidArgument for any malformed spec (empty kind or members, a kind listed twice, repeated
  // or negative members, `rank` not a member) or a timeout under 1ms, before anything connects.
  static absl::Status CheckSpecs(const std::vector<GroupSpec>& groups,
                                 const ProcessGroupsOptions& options);

  std::vector<GroupSpec> groups_;
  std::map<std::string, std::unique_ptr<Communicator>> comms_;
};

}  // namespace mimo::comm
