// MoE token dropping: capacity, argument checks and the CPU twin.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/moe_capacity.h"
#include "kernels/op_checks.h"

namespace mimo::kernels {

int64_t MoeExpertCapacity(int64_t tokens, int64_t top_k, int64_t experts, double factor,
                          int64_t min_capacity) {
  const double per_expert = static_cast<double>(tokens * top_k) / static_cast<double>(experts);
  return std::max(min_capacity, static_cast<int64_t>(std::ceil(per_expert * factor)));
}

absl::Status CheckMoeCapacityDrop(const MoeCapacityDropParams& p) {
  if (p.tokens < 0 || p.top_k < 1 || p.experts < 1 || p.experts > 1024 || p.capacity < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "MoeCapacityDrop: needs tokens >= 0, top_k >= 1, experts in [1, 1024] and capacity >= 0, "
        "got ",
        p.tokens, ", ", p.top_k, ", ", p.experts, ", ", p.capacity));
  }
  if (p.tokens * p.top_k >= (int64_t{1} << 31)) {
    return absl::InvalidArgumentError("MoeCapacityDrop: 2^31 (token, choice) pairs or more");
  }
  if (p.policy != TokenDropPolicy::kProbs && p.policy != TokenDropPolicy::kPosition) {
    return absl::InvalidArgumentError("MoeCapacityDrop: unknown drop policy");
  }
  const bool any = p.tokens > 0;
  MIMO_RETURN_IF_ERROR(
      CheckBuffers("MoeCapacityDrop", any, {{p.indices, "indices"}, {p.kept, "kept"}}));
  return CheckBuffers("MoeCapacityDrop", any && p.policy == TokenDropPolicy::kProbs,
                      {{p.probs, "probs"}});
}

absl::Status MoeCapacityDropCpu(const MoeCapacityDropParams& p) {
  MIMO_RETURN_IF_ERROR(CheckMoeCapacityDrop(p));
  const int64_t pairs = p.tokens * p.top_k;
  // Each expert's pairs in order, then ranked by the policy (a stable sort keeps ties in order).
  std::vector<std::vector<int64_t>> of_expert(p.experts);
  for (int64_t i = 0; i < pairs; ++i) {
    const int32_t e = p.indices[i];
    if (e == -1) continue;
    if (e < 0 || e >= p.experts) {
      return absl::InvalidArgumentError(
          absl::StrCat("MoeCapacityDrop: pair ", i, " chose expert ", e, " of ", p.experts));
    }
    of_expert[e].push_back(i);
  }
  for (int64_t i = 0; i < pairs; ++i) p.kept[i] = p.indices[i];
  for (std::vector<int64_t>& list : of_expert) {
    if (p.policy == TokenDropPolicy::kProbs) {
      std::stable_sort(list.begin(), list.end(),
                       [&](int64_t a, int64_t b) { return p.probs[a] > p.probs[b]; });
    }
    for (size_t s = static_cast<size_t>(p.capacity); s < list.size(); ++s) p.kept[list[s]] = -1;
  }
  return absl::OkStatus();
}

}  // namespace mimo::kernels
