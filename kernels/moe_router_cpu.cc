// MoE routing: argument checks and the CPU twins.
#include <algorithm>
#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/moe_router.h"
#include "kernels/moe_router_math.h"
#include "kernels/op_checks.h"

namespace mimo::kernels {
namespace {

absl::Status CheckTokens(const char* op, const RouterConfig& c, int64_t tokens) {
  MIMO_RETURN_IF_ERROR(CheckRouterConfig(c));
  if (tokens < 0 || tokens * c.top_k >= (int64_t{1} << 31)) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": tokens ", tokens, " (tokens * top_k must stay below 2^31)"));
  }
  return absl::OkStatus();
}

// Host-side indices (the CPU twins'): every one an expert.
absl::Status CheckIndices(const char* op, const RouterConfig& c, const int32_t* indices,
                          int64_t tokens) {
  for (int64_t i = 0; i < tokens * c.top_k; ++i) {
    if (indices[i] < 0 || indices[i] >= c.experts) {
      return absl::InvalidArgumentError(
          absl::StrCat(op, ": index ", i, " is expert ", indices[i], " of ", c.experts));
    }
  }
  return absl::OkStatus();
}

// The token range of sequence q.
struct Range {
  int64_t begin, end;
};
Range SequenceRange(const MoeAuxLossParams& p, int64_t q) {
  if (p.cu_seqlens == nullptr) return {0, p.tokens};
  return {p.cu_seqlens[q], p.cu_seqlens[q + 1]};
}

}  // namespace

absl::Status CheckRouterConfig(const RouterConfig& c) {
  if (c.experts < 1 || c.experts > 1024) {
    return absl::InvalidArgumentError(
        absl::StrCat("router: experts must be in [1, 1024], got ", c.experts));
  }
  if (c.top_k < 1 || c.top_k > c.experts || c.top_k > router::kMaxTopK) {
    return absl::InvalidArgumentError(absl::StrCat("router: top_k must be in [1, min(experts, ",
                                                   router::kMaxTopK, ")], got ", c.top_k));
  }
  if (c.score != RouterScore::kSoftmax && c.score != RouterScore::kSigmoid) {
    return absl::InvalidArgumentError("router: unknown score function");
  }
  if (!std::isfinite(c.scaling_factor) || c.scaling_factor <= 0.0f) {
    return absl::InvalidArgumentError(
        absl::StrCat("router: scaling_factor must be positive, got ", c.scaling_factor));
  }
  if (c.num_groups != 0) {
    if (c.num_groups < 2 || c.num_groups > router::kMaxGroups || c.experts % c.num_groups != 0) {
      return absl::InvalidArgumentError(absl::StrCat("router: num_groups (", c.num_groups,
                                                     ") must be in [2, ", router::kMaxGroups,
                                                     "] and divide experts (", c.experts, ")"));
    }
    if (c.group_top_k < 1 || c.group_top_k > c.num_groups || c.top_k % c.group_top_k != 0 ||
        c.top_k > c.group_top_k * (c.experts / c.num_groups)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "router: group_top_k (", c.group_top_k, ") must be in [1, num_groups], divide top_k (",
          c.top_k, ") and leave enough experts in the chosen groups"));
    }
  } else if (c.group_top_k != 0) {
    return absl::InvalidArgumentError("router: group_top_k without num_groups");
  }
  return absl::OkStatus();
}

absl::Status CheckMoeRouter(const MoeRouterParams& p) {
  MIMO_RETURN_IF_ERROR(CheckTokens("MoeRouter", p.config, p.tokens));
  MIMO_RETURN_IF_ERROR(
      CheckBuffers("MoeRouter", true, {{p.tokens_per_expert, "tokens_per_expert"}}));
  return CheckBuffers(
      "MoeRouter", p.tokens > 0,
      {{p.logits, "logits"}, {p.scores, "scores"}, {p.indices, "indices"}, {p.probs, "probs"}});
}

absl::Status CheckMoeRouterBackward(const MoeRouterBackwardParams& p) {
  MIMO_RETURN_IF_ERROR(CheckTokens("MoeRouterBackward", p.config, p.tokens));
  return CheckBuffers(
      "MoeRouterBackward", p.tokens > 0,
      {{p.dprobs, "dprobs"}, {p.scores, "scores"}, {p.indices, "indices"}, {p.dlogits, "dlogits"}});
}

absl::Status CheckMoeAuxLoss(const MoeAuxLossParams& p) {
  MIMO_RETURN_IF_ERROR(CheckTokens("MoeAuxLoss", p.config, p.tokens));
  if (!(p.aux_coeff >= 0.0f) || !(p.z_coeff >= 0.0f) || !std::isfinite(p.aux_coeff) ||
      !std::isfinite(p.z_coeff) || !std::isfinite(p.loss_grad)) {
    return absl::InvalidArgumentError(
        absl::StrCat("MoeAuxLoss: coefficients must be finite and >= 0 (aux ", p.aux_coeff, ", z ",
                     p.z_coeff, ") and loss_grad finite"));
  }
  if (p.cu_seqlens != nullptr && p.num_seqs < 1) {
    return absl::InvalidArgumentError("MoeAuxLoss: cu_seqlens needs num_seqs >= 1");
  }
  if (p.counts != nullptr &&
      (p.cu_seqlens != nullptr || p.total_tokens < p.tokens || p.total_tokens < 1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "MoeAuxLoss: the whole micro-batch's counts need total_tokens >= max(tokens, 1) (got ",
        p.total_tokens, " for ", p.tokens, " tokens) and no cu_seqlens"));
  }
  MIMO_RETURN_IF_ERROR(CheckBuffers("MoeAuxLoss", true, {{p.losses, "losses"}}));
  return CheckBuffers("MoeAuxLoss", p.tokens > 0,
                      {{p.logits, "logits"}, {p.scores, "scores"}, {p.indices, "indices"}});
}

absl::Status MoeRouterCpu(const MoeRouterParams& p) {
  MIMO_RETURN_IF_ERROR(CheckMoeRouter(p));
  const RouterConfig& c = p.config;
  if (!p.accumulate_counts) {
    for (int64_t e = 0; e < c.experts; ++e) p.tokens_per_expert[e] = 0;
  }
  for (int64_t t = 0; t < p.tokens; ++t) {
    float* scores = p.scores + t * c.experts;
    int32_t* indices = p.indices + t * c.top_k;
    router::Scores(c, p.logits + t * c.experts, scores);
    router::Choose(c, scores, p.expert_bias, indices, p.probs + t * c.top_k);
    for (int64_t j = 0; j < c.top_k; ++j) ++p.tokens_per_expert[indices[j]];
  }
  return absl::OkStatus();
}

absl::Status MoeRouterBackwardCpu(const MoeRouterBackwardParams& p) {
  MIMO_RETURN_IF_ERROR(CheckMoeRouterBackward(p));
  MIMO_RETURN_IF_ERROR(CheckIndices("MoeRouterBackward", p.config, p.indices, p.tokens));
  const RouterConfig& c = p.config;
  for (int64_t t = 0; t < p.tokens; ++t) {
    router::Backward(c, p.dprobs + t * c.top_k, p.scores + t * c.experts, p.indices + t * c.top_k,
                     p.dlogits + t * c.experts);
  }
  return absl::OkStatus();
}

absl::Status MoeAuxLossCpu(const MoeAuxLossParams& p) {
  MIMO_RETURN_IF_ERROR(CheckMoeAuxLoss(p));
  const RouterConfig& c = p.config;
  const int64_t sequences = p.cu_seqlens != nullptr ? p.num_seqs : 1;
  if (p.cu_seqlens != nullptr) {
    bool ok = p.cu_seqlens[0] == 0 && p.cu_seqlens[sequences] == p.tokens;
    for (int64_t q = 0; q < sequences && ok; ++q) ok = p.cu_seqlens[q] <= p.cu_seqlens[q + 1];
    if (!ok) {
      return absl::InvalidArgumentError(
          "MoeAuxLoss: cu_seqlens must run from 0 to tokens without decreasing");
    }
  }
  MIMO_RETURN_IF_ERROR(CheckIndices("MoeAuxLoss", c, p.indices, p.tokens));
  // Per sequence: the counts c_q and sum_t a[t] per expert.
  // A part of the micro-batch normalizes by the whole one's tokens and weighs by its counts.
  const bool part = p.counts != nullptr;
  const int64_t whole = part ? p.total_tokens : p.tokens;
  std::vector<int32_t> counts(sequences * c.experts, 0);
  std::vector<double> sums(sequences * c.experts, 0.0);
  double aux = 0.0;
  int64_t nonempty = 0;
  for (int64_t q = 0; q < sequences; ++q) {
    const Range r = SequenceRange(p, q);
    if (r.end == r.begin && !part) continue;
    int32_t* cq = counts.data() + q * c.experts;
    double* aq = sums.data() + q * c.experts;
    for (int64_t t = r.begin; t < r.end; ++t) {
      const float* s = p.scores + t * c.experts;
      const float denom = router::AuxDenominator(c, s);
      for (int64_t e = 0; e < c.experts; ++e) aq[e] += s[e] / denom;
      for (int64_t j = 0; j < c.top_k; ++j) ++cq[p.indices[t * c.top_k + j]];
    }
    if (part) std::copy(p.counts, p.counts + c.experts, cq);
    double dot = 0.0;
    for (int64_t e = 0; e < c.experts; ++e) dot += cq[e] * aq[e];
    const double tq = static_cast<double>(part ? whole : r.end - r.begin);
    aux += dot * static_cast<double>(c.experts) / (static_cast<double>(c.top_k) * tq * tq);
    ++nonempty;
  }
  double z = 0.0;
  for (int64_t t = 0; t < p.tokens && p.z_coeff != 0.0f; ++t) {
    const double lse = router::LogSumExp(p.logits + t * c.experts, c.experts);
    z += lse * lse;
  }
  p.losses[0] = nonempty > 0 ? static_cast<float>(p.aux_coeff * aux / nonempty) : 0.0f;
  p.losses[1] = whole > 0 ? static_cast<float>(p.z_coeff * z / whole) : 0.0f;
  if (p.dlogits == nullptr) return absl::OkStatus();
  const float z_scale = whole > 0 ? p.loss_grad * p.z_coeff / static_cast<float>(whole) : 0;
  for (int64_t q = 0; q < sequences; ++q) {
    const Range r = SequenceRange(p, q);
    const float tq = static_cast<float>(part ? whole : r.end - r.begin);
    const float scale = p.loss_grad * p.aux_coeff * static_cast<float>(c.experts) /
                        (static_cast<float>(c.top_k) * tq * tq * static_cast<float>(nonempty));
    for (int64_t t = r.begin; t < r.end; ++t) {
      router::AddAuxGradient(c, p.logits + t * c.experts, p.scores + t * c.experts,
                             counts.data() + q * c.experts, scale, z_scale,
                             p.dlogits + t * c.experts);
    }
  }
  return absl::OkStatus();
}

}  // namespace mimo::kernels
