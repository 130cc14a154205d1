// Token dropping by capacity, written as ranks: a pair is kept when fewer than `capacity` pairs
// of its expert come before it (by weight, ties by position; or by position).
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/moe_capacity.h"

namespace mimo::kernels::testing {

inline std::vector<int32_t> CapacityDropReference(TokenDropPolicy policy,
                                                  const std::vector<int32_t>& indices,
                                                  const std::vector<float>& probs,
                                                  int64_t capacity) {
  std::vector<int32_t> kept(indices.size());
  for (size_t i = 0; i < indices.size(); ++i) {
    if (indices[i] < 0) {
      kept[i] = -1;
      continue;
    }
    int64_t before = 0;
    for (size_t j = 0; j < indices.size(); ++j) {
      if (j == i || indices[j] != indices[i]) continue;
      const bool earlier = j < i;
      if (policy == TokenDropPolicy::kPosition) {
        before += earlier;
      } else {
        before += probs[j] > probs[i] || (probs[j] == probs[i] && earlier);
      }
    }
    kept[i] = before < capacity ? indices[i] : -1;
  }
  return kept;
}

}  // namespace mimo::kernels::testing
