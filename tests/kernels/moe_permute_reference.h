// Float64 MoE token permutation, written as a stable sort of the (token, choice) pairs by expert.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

namespace mimo::kernels::testing {

struct PermuteMapReference {
  std::vector<int32_t> rows, offsets, pair_of_row;
};

inline PermuteMapReference PermuteMapFloat64(const std::vector<int32_t>& indices, int64_t experts,
                                             int64_t align, int64_t capacity) {
  PermuteMapReference r;
  std::vector<int64_t> order(indices.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return indices[a] < indices[b]; });
  r.offsets.assign(experts + 1, 0);
  for (int64_t e = 0; e < experts; ++e) {
    const int64_t n = std::count(indices.begin(), indices.end(), static_cast<int32_t>(e));
    r.offsets[e + 1] = static_cast<int32_t>(r.offsets[e] + (n + align - 1) / align * align);
  }
  r.rows.assign(indices.size(), -1);
  r.pair_of_row.assign(capacity, -1);
  int64_t previous = -1, within = 0;
  for (int64_t pair : order) {
    const int32_t e = indices[pair];
    if (e < 0) continue;  // Goes nowhere.
    within = e == previous ? within + 1 : 0;
    previous = e;
    r.rows[pair] = static_cast<int32_t>(r.offsets[e] + within);
    r.pair_of_row[r.rows[pair]] = static_cast<int32_t>(pair);
  }
  return r;
}

// Zipf-like routing: expert e is chosen with weight 1 / (e + 1)^skew (0: uniform); top_k
// distinct experts per token; then each choice replaced by -1 (goes nowhere) with probability
// `dropped`.
template <typename Random>
std::vector<int32_t> RandomRouting(int64_t tokens, int64_t top_k, int64_t experts, double skew,
                                   Random& random, double dropped = 0.0) {
  std::vector<double> weight(experts);
  for (int64_t e = 0; e < experts; ++e) weight[e] = 1.0 / std::pow(e + 1.0, skew);
  std::vector<int32_t> out;
  for (int64_t t = 0; t < tokens; ++t) {
    std::vector<double> w = weight;
    for (int64_t j = 0; j < top_k; ++j) {
      std::discrete_distribution<int32_t> pick(w.begin(), w.end());
      const int32_t e = pick(random);
      out.push_back(e);
      w[e] = 0;
    }
  }
  if (dropped > 0.0) {
    std::bernoulli_distribution drop(dropped);
    for (int32_t& e : out) {
      if (drop(random)) e = -1;
    }
  }
  return out;
}

}  // namespace mimo::kernels::testing
