// Float64 MoE routing, written independently of the kernels' arithmetic: scores, group-limited
// top-k choice, combine weights, counts and the auxiliary losses; gradients by central
// differences in float64 with the choices held fixed.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <numeric>
#include <vector>

#include "kernels/moe_router.h"

namespace mimo::kernels::testing {

struct RouterReference {
  std::vector<double> scores;    // (tokens, experts)
  std::vector<int32_t> indices;  // (tokens, top_k)
  std::vector<double> probs;     // (tokens, top_k)
  std::vector<int32_t> counts;   // (experts,)
};

inline std::vector<double> ScoresFloat64(const RouterConfig& c, const double* logits) {
  std::vector<double> s(c.experts);
  if (c.score == RouterScore::kSigmoid) {
    for (int64_t e = 0; e < c.experts; ++e) s[e] = 1.0 / (1.0 + std::exp(-logits[e]));
    return s;
  }
  const double m = *std::max_element(logits, logits + c.experts);
  double z = 0;
  for (int64_t e = 0; e < c.experts; ++e) z += s[e] = std::exp(logits[e] - m);
  for (double& v : s) v /= z;
  return s;
}

// Experts ordered by `key` descending, ties to the lower index.
inline std::vector<int64_t> Ranked(const std::vector<double>& key, int64_t begin, int64_t end) {
  std::vector<int64_t> order(end - begin);
  std::iota(order.begin(), order.end(), begin);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return key[a] > key[b]; });
  return order;
}

// The choices of one token (from its scores) when `indices` is empty; with given `indices`, the
// combine weights of those choices (for differentiating with the choice held).
inline std::vector<double> ProbsFloat64(const RouterConfig& c, const std::vector<double>& s,
                                        const std::vector<double>& bias,
                                        std::vector<int32_t>& indices) {
  if (indices.empty()) {
    std::vector<double> key = s;
    for (int64_t e = 0; e < c.experts && !bias.empty(); ++e) key[e] += bias[e];
    std::vector<bool> allowed(c.experts, true);
    if (c.num_groups > 0) {
      const int64_t size = c.experts / c.num_groups, per_group = c.top_k / c.group_top_k;
      std::vector<double> group_score(c.num_groups);
      for (int64_t g = 0; g < c.num_groups; ++g) {
        const std::vector<int64_t> order = Ranked(key, g * size, (g + 1) * size);
        for (int64_t i = 0; i < per_group; ++i) group_score[g] += key[order[i]];
      }
      const std::vector<int64_t> groups = Ranked(group_score, 0, c.num_groups);
      std::fill(allowed.begin(), allowed.end(), false);
      for (int64_t i = 0; i < c.group_top_k; ++i) {
        for (int64_t e = groups[i] * size; e < (groups[i] + 1) * size; ++e) allowed[e] = true;
      }
    }
    for (int64_t e = 0; e < c.experts; ++e) {
      if (!allowed[e]) key[e] = -INFINITY;
    }
    const std::vector<int64_t> order = Ranked(key, 0, c.experts);
    for (int64_t j = 0; j < c.top_k; ++j) indices.push_back(static_cast<int32_t>(order[j]));
  }
  std::vector<double> probs;
  double sum = 0;
  for (int32_t e : indices) sum += s[e];
  for (int32_t e : indices) {
    const bool normalize = c.normalize && !(c.score == RouterScore::kSigmoid && c.top_k == 1);
    probs.push_back(c.scaling_factor * (normalize ? s[e] / (sum + 1e-20) : s[e]));
  }
  return probs;
}

inline RouterReference RouterFloat64(const RouterConfig& c, const std::vector<double>& logits,
                                     const std::vector<double>& bias, int64_t tokens) {
  RouterReference r;
  r.counts.assign(c.experts, 0);
  for (int64_t t = 0; t < tokens; ++t) {
    const std::vector<double> s = ScoresFloat64(c, logits.data() + t * c.experts);
    std::vector<int32_t> idx;
    const std::vector<double> p = ProbsFloat64(c, s, bias, idx);
    r.scores.insert(r.scores.end(), s.begin(), s.end());
    r.indices.insert(r.indices.end(), idx.begin(), idx.end());
    r.probs.insert(r.probs.end(), p.begin(), p.end());
    for (int32_t e : idx) ++r.counts[e];
  }
  return r;
}

// d/dlogits of sum(probs * dprobs) with the choices fixed: central differences (h = 1e-6).
inline std::vector<double> RouterBackwardFloat64(const RouterConfig& c,
                                                 const std::vector<double>& logits,
                                                 const std::vector<int32_t>& indices,
                                                 const std::vector<double>& dprobs,
                                                 int64_t tokens) {
  std::vector<double> d(tokens * c.experts);
  for (int64_t t = 0; t < tokens; ++t) {
    std::vector<double> row(logits.begin() + t * c.experts, logits.begin() + (t + 1) * c.experts);
    auto f = [&](const std::vector<double>& l) {
      std::vector<int32_t> idx(indices.begin() + t * c.top_k, indices.begin() + (t + 1) * c.top_k);
      const std::vector<double> p = ProbsFloat64(c, ScoresFloat64(c, l.data()), {}, idx);
      double v = 0;
      for (int64_t j = 0; j < c.top_k; ++j) v += p[j] * dprobs[t * c.top_k + j];
      return v;
    };
    for (int64_t e = 0; e < c.experts; ++e) {
      std::vector<double> plus = row, minus = row;
      plus[e] += 1e-6;
      minus[e] -= 1e-6;
      d[t * c.experts + e] = (f(plus) - f(minus)) / 2e-6;
    }
  }
  return d;
}

// {aux, z} for the choices `indices` (fixed) over sequences `cu_seqlens` (empty: one sequence).
inline std::vector<double> AuxLossFloat64(const RouterConfig& c, const std::vector<double>& logits,
                                          const std::vector<int32_t>& indices,
                                          const std::vector<int32_t>& cu_seqlens, int64_t tokens,
                                          double aux_coeff, double z_coeff) {
  std::vector<int32_t> cu = cu_seqlens;
  if (cu.empty()) cu = {0, static_cast<int32_t>(tokens)};
  double aux = 0, z = 0;
  int nonempty = 0;
  for (size_t q = 0; q + 1 < cu.size(); ++q) {
    const int64_t n = cu[q + 1] - cu[q];
    if (n == 0) continue;
    std::vector<double> counts(c.experts, 0), sums(c.experts, 0);
    for (int64_t t = cu[q]; t < cu[q + 1]; ++t) {
      std::vector<double> s = ScoresFloat64(c, logits.data() + t * c.experts);
      const double denom =
          c.score == RouterScore::kSigmoid ? std::accumulate(s.begin(), s.end(), 0.0) + 1e-20 : 1.0;
      for (int64_t e = 0; e < c.experts; ++e) sums[e] += s[e] / denom;
      for (int64_t j = 0; j < c.top_k; ++j) ++counts[indices[t * c.top_k + j]];
    }
    double dot = 0;
    for (int64_t e = 0; e < c.experts; ++e) dot += counts[e] * sums[e];
    aux += aux_coeff * c.experts * dot / (c.top_k * static_cast<double>(n) * n);
    ++nonempty;
  }
  for (int64_t t = 0; t < tokens; ++t) {
    const double* l = logits.data() + t * c.experts;
    const double m = *std::max_element(l, l + c.experts);
    double sum = 0;
    for (int64_t e = 0; e < c.experts; ++e) sum += std::exp(l[e] - m);
    const double lse = m + std::log(sum);
    z += lse * lse;
  }
  return {nonempty > 0 ? aux / nonempty : 0.0, tokens > 0 ? z_coeff * z / tokens : 0.0};
}

// d(aux + z)/dlogits with the choices fixed: central differences (h = 1e-6).
inline std::vector<double> AuxLossGradFloat64(const RouterConfig& c, std::vector<double> logits,
                                              const std::vector<int32_t>& indices,
                                              const std::vector<int32_t>& cu_seqlens,
                                              int64_t tokens, double aux_coeff, double z_coeff) {
  std::vector<double> d(logits.size());
  for (size_t i = 0; i < logits.size(); ++i) {
    const double saved = logits[i];
    logits[i] = saved + 1e-6;
    const std::vector<double> plus =
        AuxLossFloat64(c, logits, indices, cu_seqlens, tokens, aux_coeff, z_coeff);
    logits[i] = saved - 1e-6;
    const std::vector<double> minus =
        AuxLossFloat64(c, logits, indices, cu_seqlens, tokens, aux_coeff, z_coeff);
    logits[i] = saved;
    d[i] = (plus[0] + plus[1] - minus[0] - minus[1]) / 2e-6;
  }
  return d;
}

}  // namespace mimo::kernels::testing
