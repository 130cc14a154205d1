// Attention in float64: the reference both the CPU twin and the CUDA kernels are measured against.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "tests/kernels/op_test_util.h"

namespace mimo::kernels::testing {

struct AttentionReference {
  std::vector<double> out, lse, dq, dk, dv;
  // The size of the terms dq's and dk's sums cancel: the largest element of the same sums taken
  // over |term| with |dP - D| as |dP| + |D|. A backward computes D = rowsum(dout * out) from its
  // rounded out (bf16: 2^-9 relative), an error that dP - D can magnify far beyond max |dq|, so
  // their errors are measured against these (as RMSNorm's dx is).
  double dq_scale = 0, dk_scale = 0;
};

// q, dout: (total, heads, head_dim); k, v: (total, kv_heads, head_dim); cu_seqlens as in
// AttentionParams. dout empty: no backward. The backward uses its own out and lse.
inline AttentionReference AttentionFloat64(
    const std::vector<double>& q, const std::vector<double>& k, const std::vector<double>& v,
    const std::vector<double>& dout, const std::vector<int32_t>& cu_seqlens, int64_t heads,
    int64_t kv_heads, int64_t head_dim, double scale, bool causal) {
  const int64_t total = cu_seqlens.back(), group = heads / kv_heads;
  const int64_t d_model = heads * head_dim, kv_model = kv_heads * head_dim;
  AttentionReference r;
  r.out.assign(total * d_model, 0.0);
  r.lse.assign(heads * total, 0.0);
  const bool backward = !dout.empty();
  r.dq.assign(backward ? q.size() : 0, 0.0);
  r.dk.assign(backward ? k.size() : 0, 0.0);
  r.dv.assign(backward ? v.size() : 0, 0.0);
  std::vector<double> dq_terms(r.dq.size(), 0.0), dk_terms(r.dk.size(), 0.0);
  auto dot = [&](const std::vector<double>& a, int64_t ia, const std::vector<double>& b,
                 int64_t ib) {
    double sum = 0;
    for (int64_t d = 0; d < head_dim; ++d) sum += a[ia + d] * b[ib + d];
    return sum;
  };
  for (size_t s = 0; s + 1 < cu_seqlens.size(); ++s) {
    const int64_t start = cu_seqlens[s], len = cu_seqlens[s + 1] - start;
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t kv_offset = (h / group) * head_dim;
      for (int64_t i = 0; i < len; ++i) {
        const int64_t row = (start + i) * d_model + h * head_dim;
        const int64_t keys = causal ? i + 1 : len;
        std::vector<double> score(keys);
        double max = -INFINITY;
        for (int64_t j = 0; j < keys; ++j) {
          score[j] = scale * dot(q, row, k, (start + j) * kv_model + kv_offset);
          max = std::max(max, score[j]);
        }
        double sum = 0;
        for (int64_t j = 0; j < keys; ++j) sum += std::exp(score[j] - max);
        const double lse = max + std::log(sum);
        r.lse[h * total + start + i] = lse;
        for (int64_t j = 0; j < keys; ++j) {
          const double prob = std::exp(score[j] - lse);
          for (int64_t d = 0; d < head_dim; ++d) {
            r.out[row + d] += prob * v[(start + j) * kv_model + kv_offset + d];
          }
        }
        if (!backward) continue;
        const double row_sum = dot(dout, row, r.out, row);
        for (int64_t j = 0; j < keys; ++j) {
          const int64_t kv_row = (start + j) * kv_model + kv_offset;
          const double prob = std::exp(score[j] - lse);
          const double dp = dot(dout, row, v, kv_row);
          const double dscore = prob * (dp - row_sum);
          const double dscore_size = prob * (std::abs(dp) + std::abs(row_sum));
          for (int64_t d = 0; d < head_dim; ++d) {
            r.dv[kv_row + d] += prob * dout[row + d];
            r.dq[row + d] += scale * dscore * k[kv_row + d];
            r.dk[kv_row + d] += scale * dscore * q[row + d];
            dq_terms[row + d] += std::abs(scale * dscore_size * k[kv_row + d]);
            dk_terms[kv_row + d] += std::abs(scale * dscore_size * q[row + d]);
          }
        }
      }
    }
  }
  for (const double t : dq_terms) r.dq_scale = std::max(r.dq_scale, t);
  for (const double t : dk_terms) r.dk_scale = std::max(r.dk_scale, t);
  return r;
}

// cu_seqlens of sequences of the given lengths.
inline std::vector<int32_t> CuSeqlens(const std::vector<int32_t>& lengths) {
  std::vector<int32_t> cu = {0};
  for (int32_t len : lengths) cu.push_back(cu.back() + len);
  return cu;
}

}  // namespace mimo::kernels::testing
