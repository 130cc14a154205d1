// The process groups a rank builds: the non-empty groups of its assignment, in the global kind
// order.
#include "worker/group_specs.h"

#include <algorithm>
#include <string>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/match.h"
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
  // Links come after the groups, in the order given (the plan's global link order).
  for (const v1::RankLink& link : rank.links()) {
    if (!absl::StartsWith(link.kind(), "link_") || known.contains(link.kind())) {
      return absl::InvalidArgumentError(absl::StrCat("the assignment has a link of kind '",
                                                     link.kind(),
                                                     "': a link kind starts with 'link_' "
                                                     "and is given once"));
    }
    if (link.encoder_rank() == link.language_rank() ||
        (link.encoder_rank() != rank.rank() && link.language_rank() != rank.rank())) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the assignment's link ", link.kind(), " between ranks ", link.encoder_rank(), " and ",
          link.language_rank(), " does not connect rank ", rank.rank()));
    }
    known.insert(link.kind());
    specs.push_back({.kind = link.kind(), .members = {link.encoder_rank(), link.language_rank()}});
  }
  return specs;
}

}  // namespace mimo::worker
