// Attention merge: the argument checks and the CPU twin.
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/attention_merge.h"
#include "kernels/cpu_elements.h"
#include "kernels/op_checks.h"

namespace mimo::kernels {

absl::Status CheckAttentionMerge(const AttentionMergeParams& p) {
  MIMO_RETURN_IF_ERROR(CheckFloatDType("AttentionMerge", p.dtype));
  if (p.tokens < 0 || p.heads < 1 || p.head_dim < 1) {
    return absl::InvalidArgumentError(absl::StrCat("AttentionMerge: tokens ", p.tokens, ", heads ",
                                                   p.heads, ", head_dim ", p.head_dim));
  }
  return CheckBuffers(
      "AttentionMerge", p.tokens > 0,
      {{p.out, "out"}, {p.lse, "lse"}, {p.part_out, "part_out"}, {p.part_lse, "part_lse"}});
}

absl::Status AttentionMergeCpu(const AttentionMergeParams& p) {
  MIMO_RETURN_IF_ERROR(CheckAttentionMerge(p));
  const int64_t d = p.head_dim, row = p.heads * d;
  constexpr double kNone = -std::numeric_limits<double>::infinity();
  for (int64_t h = 0; h < p.heads; ++h) {
    for (int64_t t = 0; t < p.tokens; ++t) {
      float* out = p.out + t * row + h * d;
      const int64_t part = t * row + h * d;  // Element index in part_out.
      float& lse = p.lse[h * p.tokens + t];
      const double pl = p.part_lse[h * p.tokens + t];
      if (p.first) {
        for (int64_t i = 0; i < d; ++i) out[i] = LoadElement(p.dtype, p.part_out, part + i);
        lse = static_cast<float>(pl);
        continue;
      }
      const double l = lse, m = std::max(l, pl);
      if (m == kNone) continue;  // No keys in either set.
      const double total = m + std::log(std::exp(l - m) + std::exp(pl - m));
      const double a = std::exp(l - total), b = std::exp(pl - total);
      for (int64_t i = 0; i < d; ++i) {
        out[i] = static_cast<float>(a * out[i] + b * LoadElement(p.dtype, p.part_out, part + i));
      }
      lse = static_cast<float>(total);
    }
  }
  return absl::OkStatus();
}

}  // namespace mimo::kernels
