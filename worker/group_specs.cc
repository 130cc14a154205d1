// The process groups a rank builds: the non-empty groups of its assignment, in the global kind
// order.
#include "worker/group_specs.h"

#include <algorithm>
#include <string>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "parallel/rank_plan.h"

namespace mimo::worker {

absl::StatusOr<std::vector<comm::GroupSpec>> GroupSpecsOf(const v1::RankAssignment& rank) {
  absl::flat_hash_set<std::string> known;
  std::vector<comm::GroupSpec> specs;
  for (int k = 0; k < parallel::kNumGroupKinds; ++k) {
    const std::string kind(parallel::GroupKindName(static_cast<parallel::GroupKind>(k)));
    known.insert(kind);
    auto it = rank.groups().find(kind);
    if (it == rank.groups().end() || it->second.ranks().empty()) continue;
    comm::GroupSpec spec;
    spec.kind = kind;
    spec.members.assign(it->second.ranks().begin(), it->second.ranks().end());
    if (std::find(spec.members.begin(), spec.members.end(), rank.rank()) == spec.members.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("the assignment's group ", kind, " does not contain rank ", rank.rank()));
    }
    specs.push_back(std::move(spec));
  }
  for (const auto& [kind, group] : rank.groups()) {
    if (!known.contains(kind)) {
      return absl::InvalidArgumentError(
          absl::StrCat("the assignment has a group of unknown kind '", kind,
                       "' (a newer coordinator?): its place in the connection order is unknown"));
    }
  }
  return specs;
}

}  // namespace mimo::worker
