// Attention over packed variable-length sequences, forward and backward: the argument checks and
// the CPU twins.
#include <algorithm>
#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/attention.h"
#include "kernels/cpu_elements.h"
#include "kernels/op_checks.h"

namespace mimo::kernels {
namespace {

absl::Status CheckSizes(const char* op, int64_t num_seqs, int64_t total_tokens, int64_t heads,
                        int64_t kv_heads, int64_t head_dim, int64_t max_seqlen, float scale) {
  if (num_seqs < 0 || total_tokens < 0 || max_seqlen < 0) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": bad sizes (num_seqs ", num_seqs,
                                                   ", total_tokens ", total_tokens, ", max_seqlen ",
                                                   max_seqlen, ")"));
  }
  if (total_tokens > 0x7fffffff) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": total_tokens ", total_tokens, " exceeds 2^31 - 1"));
  }
  if (heads <= 0 || kv_heads <= 0 || head_dim <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": heads (", heads, "), kv_heads (",
                                                   kv_heads, ") and head_dim (", head_dim,
                                                   ") must be positive"));
  }
  if (heads % kv_heads != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": heads ", heads, " is not a multiple of kv_heads ", kv_heads));
  }
  if (num_seqs == 0 && total_tokens > 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": ", total_tokens, " tokens but no sequences"));
  }
  if (max_seqlen > total_tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": max_seqlen ", max_seqlen, " exceeds total_tokens ", total_tokens));
  }
  if (!std::isfinite(scale)) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": scale must be finite, got ", scale));
  }
  return absl::OkStatus();
}

// The contents of cu_seqlens (host memory): 0, nondecreasing, ending at total_tokens, no sequence
// longer than max_seqlen when that is given.
absl::Status CheckCuSeqlens(const char* op, const int32_t* cu, int64_t num_seqs,
                            int64_t total_tokens, int64_t max_seqlen) {
  if (cu[0] != 0) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": cu_seqlens[0] is ", cu[0], ", not 0"));
  }
  for (int64_t s = 0; s < num_seqs; ++s) {
    if (cu[s + 1] < cu[s]) {
      return absl::InvalidArgumentError(absl::StrCat(op, ": cu_seqlens decreases at ", s + 1, " (",
                                                     cu[s], " then ", cu[s + 1], ")"));
    }
    if (max_seqlen > 0 && cu[s + 1] - cu[s] > max_seqlen) {
      return absl::InvalidArgumentError(absl::StrCat(op, ": sequence ", s, " has ",
                                                     cu[s + 1] - cu[s],
                                                     " tokens, more than max_seqlen ", max_seqlen));
    }
  }
  if (cu[num_seqs] != total_tokens) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": cu_seqlens ends at ", cu[num_seqs],
                                                   ", not at total_tokens ", total_tokens));
  }
  return absl::OkStatus();
}

// `n` elements of `dtype` at `base` as floats.
std::vector<float> Floats(DType dtype, const void* base, int64_t n) {
  std::vector<float> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) out[i] = LoadElement(dtype, base, i);
  return out;
}

double Dot(const float* a, const float* b, int64_t n) {
  double sum = 0.0;
  for (int64_t d = 0; d < n; ++d) sum += static_cast<double>(a[d]) * b[d];
  return sum;
}

}  // namespace

absl::Status CheckAttention(const AttentionParams& p) {
  MIMO_RETURN_IF_ERROR(CheckFloatDType("Attention", p.dtype));
  MIMO_RETURN_IF_ERROR(CheckSizes("Attention", p.num_seqs, p.total_tokens, p.heads, p.kv_heads,
                                  p.head_dim, p.max_seqlen, p.scale));
  return CheckBuffers("Attention", p.total_tokens > 0,
                      {{p.q, "q"},
                       {p.k, "k"},
                       {p.v, "v"},
                       {p.out, "out"},
                       {p.lse, "lse"},
                       {p.cu_seqlens, "cu_seqlens"}});
}

absl::Status CheckAttentionBackward(const AttentionBackwardParams& p) {
  MIMO_RETURN_IF_ERROR(CheckFloatDType("AttentionBackward", p.dtype));
  MIMO_RETURN_IF_ERROR(CheckSizes("AttentionBackward", p.num_seqs, p.total_tokens, p.heads,
                                  p.kv_heads, p.head_dim, p.max_seqlen, p.scale));
  return CheckBuffers("AttentionBackward", p.total_tokens > 0,
                      {{p.dout, "dout"},
                       {p.q, "q"},
                       {p.k, "k"},
                       {p.v, "v"},
                       {p.out, "out"},
                       {p.lse, "lse"},
                       {p.dq, "dq"},
                       {p.dk, "dk"},
                       {p.dv, "dv"},
                       {p.cu_seqlens, "cu_seqlens"}});
}

absl::Status AttentionCpu(const AttentionParams& p) {
  MIMO_RETURN_IF_ERROR(CheckAttention(p));
  if (p.total_tokens == 0) return absl::OkStatus();
  MIMO_RETURN_IF_ERROR(
      CheckCuSeqlens("Attention", p.cu_seqlens, p.num_seqs, p.total_tokens, p.max_seqlen));
  const int64_t d_model = p.heads * p.head_dim, kv_model = p.kv_heads * p.head_dim;
  const int64_t group = p.heads / p.kv_heads;
  const std::vector<float> q = Floats(p.dtype, p.q, p.total_tokens * d_model);
  const std::vector<float> k = Floats(p.dtype, p.k, p.total_tokens * kv_model);
  const std::vector<float> v = Floats(p.dtype, p.v, p.total_tokens * kv_model);
  std::vector<double> scores, acc(static_cast<size_t>(p.head_dim));
  for (int64_t s = 0; s < p.num_seqs; ++s) {
    const int64_t start = p.cu_seqlens[s], len = p.cu_seqlens[s + 1] - start;
    for (int64_t h = 0; h < p.heads; ++h) {
      const int64_t kv_offset = (h / group) * p.head_dim;
      for (int64_t i = 0; i < len; ++i) {
        const int64_t row = (start + i) * d_model + h * p.head_dim;
        const int64_t keys = p.causal ? i + 1 : len;
        scores.assign(static_cast<size_t>(keys), 0.0);
        double max = -INFINITY;
        for (int64_t j = 0; j < keys; ++j) {
          scores[j] = p.scale * Dot(&q[row], &k[(start + j) * kv_model + kv_offset], p.head_dim);
          max = std::max(max, scores[j]);
        }
        double sum = 0.0;
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int64_t j = 0; j < keys; ++j) {
          const double e = std::exp(scores[j] - max);
          sum += e;
          const float* vj = &v[(start + j) * kv_model + kv_offset];
          for (int64_t d = 0; d < p.head_dim; ++d) acc[d] += e * vj[d];
        }
        for (int64_t d = 0; d < p.head_dim; ++d) {
          StoreElement(p.dtype, p.out, row + d, static_cast<float>(acc[d] / sum));
        }
        p.lse[h * p.total_tokens + start + i] = static_cast<float>(max + std::log(sum));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status AttentionBackwardCpu(const AttentionBackwardParams& p) {
  MIMO_RETURN_IF_ERROR(CheckAttentionBackward(p));
  if (p.total_tokens == 0) return absl::OkStatus();
  MIMO_RETURN_IF_ERROR(
      CheckCuSeqlens("AttentionBackward", p.cu_seqlens, p.num_seqs, p.total_tokens, p.max_seqlen));
  const int64_t d_model = p.heads * p.head_dim, kv_model = p.kv_heads * p.head_dim;
  const int64_t group = p.heads / p.kv_heads;
  const std::vector<float> dout = Floats(p.dtype, p.dout, p.total_tokens * d_model);
  const std::vector<float> q = Floats(p.dtype, p.q, p.total_tokens * d_model);
  const std::vector<float> k = Floats(p.dtype, p.k, p.total_tokens * kv_model);
  const std::vector<float> v = Floats(p.dtype, p.v, p.total_tokens * kv_model);
  const std::vector<float> out = Floats(p.dtype, p.out, p.total_tokens * d_model);
  std::vector<double> dq(q.size(), 0.0), dk(k.size(), 0.0), dv(v.size(), 0.0);
  for (int64_t s = 0; s < p.num_seqs; ++s) {
    const int64_t start = p.cu_seqlens[s], len = p.cu_seqlens[s + 1] - start;
    for (int64_t h = 0; h < p.heads; ++h) {
      const int64_t kv_offset = (h / group) * p.head_dim;
      for (int64_t i = 0; i < len; ++i) {
        const int64_t row = (start + i) * d_model + h * p.head_dim;
        const double lse = p.lse[h * p.total_tokens + start + i];
        const double row_sum = Dot(&dout[row], &out[row], p.head_dim);  // D = rowsum(dO * O).
        const int64_t keys = p.causal ? i + 1 : len;
        for (int64_t j = 0; j < keys; ++j) {
          const int64_t kv_row = (start + j) * kv_model + kv_offset;
          const double prob = std::exp(p.scale * Dot(&q[row], &k[kv_row], p.head_dim) - lse);
          const double dscore = prob * (Dot(&dout[row], &v[kv_row], p.head_dim) - row_sum);
          for (int64_t d = 0; d < p.head_dim; ++d) {
            dv[kv_row + d] += prob * dout[row + d];
            dq[row + d] += p.scale * dscore * k[kv_row + d];
            dk[kv_row + d] += p.scale * dscore * q[row + d];
          }
        }
      }
    }
  }
  for (size_t i = 0; i < dq.size(); ++i) StoreElement(p.dtype, p.dq, i, static_cast<float>(dq[i]));
  for (size_t i = 0; i < dk.size(); ++i) {
    StoreElement(p.dtype, p.dk, i, static_cast<float>(dk[i]));
    StoreElement(p.dtype, p.dv, i, static_cast<float>(dv[i]));
  }
  return absl::OkStatus();
}

}  // namespace mimo::kernels
