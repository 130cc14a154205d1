// The per-token arithmetic of MoE routing: the CPU twin's, and the CUDA kernels' where they run a
// thread per token (group-limited routing, the losses); the warp-per-token kernels reproduce its
// choices and its backward's order.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/philox.h"  // MIMO_HOST_DEVICE
#include "kernels/moe_router.h"

namespace mimo::kernels::router {

inline constexpr int kMaxTopK = 32;
inline constexpr int kMaxGroups = 64;
inline constexpr float kNormEps = 1e-20f;

MIMO_HOST_DEVICE inline float Exp(float x) { return expf(x); }
MIMO_HOST_DEVICE inline float Log(float x) { return logf(x); }

// The row's logsumexp.
MIMO_HOST_DEVICE inline float LogSumExp(const float* logits, int64_t experts) {
  float m = logits[0];
  for (int64_t e = 1; e < experts; ++e) m = logits[e] > m ? logits[e] : m;
  float z = 0.0f;
  for (int64_t e = 0; e < experts; ++e) z += Exp(logits[e] - m);
  return m + Log(z);
}

// scores[e] = softmax or sigmoid of the row's logits.
MIMO_HOST_DEVICE inline void Scores(const RouterConfig& c, const float* logits, float* scores) {
  if (c.score == RouterScore::kSigmoid) {
    for (int64_t e = 0; e < c.experts; ++e) scores[e] = 1.0f / (1.0f + Exp(-logits[e]));
    return;
  }
  float m = logits[0];
  for (int64_t e = 1; e < c.experts; ++e) m = logits[e] > m ? logits[e] : m;
  // The normalizer in the CUDA warp kernel's order: lane l sums experts l, l + 32, ... in order,
  // then the 32 partial sums meet in an xor butterfly.
  float lane[32] = {};
  for (int64_t e = 0; e < c.experts; ++e) {
    scores[e] = Exp(logits[e] - m);
    lane[e % 32] += scores[e];
  }
  for (int offset = 16; offset > 0; offset /= 2) {
    float next[32];
    for (int l = 0; l < 32; ++l) next[l] = lane[l] + lane[l ^ offset];
    for (int l = 0; l < 32; ++l) lane[l] = next[l];
  }
  const float inv = 1.0f / lane[0];
  for (int64_t e = 0; e < c.experts; ++e) scores[e] *= inv;
}

MIMO_HOST_DEVICE inline float Biased(const float* scores, const float* bias, int64_t e) {
  return bias != nullptr ? scores[e] + bias[e] : scores[e];
}

MIMO_HOST_DEVICE inline bool Taken(const int32_t* chosen, int n, int64_t e) {
  for (int i = 0; i < n; ++i) {
    if (chosen[i] == e) return true;
  }
  return false;
}

// The allowed groups as a bit mask (all when routing is not group-limited).
MIMO_HOST_DEVICE inline uint64_t AllowedGroups(const RouterConfig& c, const float* scores,
                                               const float* bias) {
  if (c.num_groups == 0) return ~uint64_t{0};
  const int64_t size = c.experts / c.num_groups;
  const int per_group = static_cast<int>(c.top_k / c.group_top_k);
  float group_score[kMaxGroups];
  for (int64_t g = 0; g < c.num_groups; ++g) {
    int32_t best[kMaxTopK];
    float sum = 0.0f;
    for (int i = 0; i < per_group; ++i) {
      int64_t arg = -1;
      float top = 0.0f;
      for (int64_t e = g * size; e < (g + 1) * size; ++e) {
        const float v = Biased(scores, bias, e);
        if (!Taken(best, i, e) && (arg < 0 || v > top)) arg = e, top = v;
      }
      best[i] = static_cast<int32_t>(arg);
      sum += top;
    }
    group_score[g] = sum;
  }
  uint64_t mask = 0;
  for (int64_t i = 0; i < c.group_top_k; ++i) {
    int64_t arg = -1;
    for (int64_t g = 0; g < c.num_groups; ++g) {
      if (!((mask >> g) & 1u) && (arg < 0 || group_score[g] > group_score[arg])) arg = g;
    }
    mask |= uint64_t{1} << arg;
  }
  return mask;
}

// Whether the combine weights are divided by the chosen scores' sum: as configured, except that a
// sigmoid router with one choice keeps its raw score (as Megatron's does).
MIMO_HOST_DEVICE inline bool Normalizes(const RouterConfig& c) {
  return c.normalize && !(c.score == RouterScore::kSigmoid && c.top_k == 1);
}

// The token's choices (best first) and combine weights from its scores.
MIMO_HOST_DEVICE inline void Choose(const RouterConfig& c, const float* scores, const float* bias,
                                    int32_t* indices, float* probs) {
  const uint64_t groups = AllowedGroups(c, scores, bias);
  const int64_t size = c.num_groups == 0 ? c.experts : c.experts / c.num_groups;
  float sum = 0.0f;
  for (int j = 0; j < c.top_k; ++j) {
    int64_t arg = -1;
    float top = 0.0f;
    for (int64_t e = 0; e < c.experts; ++e) {
      if (!((groups >> (e / size)) & 1u)) continue;
      const float v = Biased(scores, bias, e);
      if (!Taken(indices, j, e) && (arg < 0 || v > top)) arg = e, top = v;
    }
    indices[j] = static_cast<int32_t>(arg);
    probs[j] = scores[arg];
    sum += probs[j];
  }
  const float scale = Normalizes(c) ? c.scaling_factor / (sum + kNormEps) : c.scaling_factor;
  for (int j = 0; j < c.top_k; ++j) probs[j] *= scale;
}

// dlogits[e] (overwritten) from the combine weights' gradient.
MIMO_HOST_DEVICE inline void Backward(const RouterConfig& c, const float* dprobs,
                                      const float* scores, const int32_t* indices, float* dlogits) {
  // ds over the chosen experts: through the scaling and the normalization.
  float ds[kMaxTopK];
  float sum = 0.0f, dot = 0.0f;
  for (int j = 0; j < c.top_k; ++j) sum += scores[indices[j]];
  const float denom = sum + kNormEps;
  for (int j = 0; j < c.top_k; ++j) {
    ds[j] = dprobs[j] * c.scaling_factor;
    dot += ds[j] * scores[indices[j]] / denom;
  }
  if (Normalizes(c)) {
    for (int j = 0; j < c.top_k; ++j) ds[j] = (ds[j] - dot) / denom;
  }
  for (int64_t e = 0; e < c.experts; ++e) dlogits[e] = 0.0f;
  if (c.score == RouterScore::kSigmoid) {
    for (int j = 0; j < c.top_k; ++j) {
      const float s = scores[indices[j]];
      dlogits[indices[j]] = ds[j] * s * (1.0f - s);
    }
    return;
  }
  float inner = 0.0f;  // sum over the chosen of ds * s
  for (int j = 0; j < c.top_k; ++j) inner += ds[j] * scores[indices[j]];
  for (int64_t e = 0; e < c.experts; ++e) dlogits[e] = -scores[e] * inner;
  for (int j = 0; j < c.top_k; ++j) dlogits[indices[j]] += scores[indices[j]] * ds[j];
}

// The auxiliary scores' normalizer: 1 for softmax, sum(s) + eps for sigmoid.
MIMO_HOST_DEVICE inline float AuxDenominator(const RouterConfig& c, const float* scores) {
  if (c.score == RouterScore::kSoftmax) return 1.0f;
  float sum = 0.0f;
  for (int64_t e = 0; e < c.experts; ++e) sum += scores[e];
  return sum + kNormEps;
}

// Adds to dlogits the gradient of sum_e da[e] * a[e] (a = the auxiliary scores) where da[e] =
// scale * counts[e], and of z_scale * logsumexp(logits)^2.
MIMO_HOST_DEVICE inline void AddAuxGradient(const RouterConfig& c, const float* logits,
                                            const float* scores, const int32_t* counts, float scale,
                                            float z_scale, float* dlogits) {
  if (scale != 0.0f) {
    const float denom = AuxDenominator(c, scores);
    float inner = 0.0f;  // sum of da * a
    for (int64_t e = 0; e < c.experts; ++e) {
      inner += scale * static_cast<float>(counts[e]) * scores[e] / denom;
    }
    for (int64_t e = 0; e < c.experts; ++e) {
      const float da = scale * static_cast<float>(counts[e]);
      const float s = scores[e];
      if (c.score == RouterScore::kSoftmax) {
        dlogits[e] += s * (da - inner);
      } else {
        dlogits[e] += (da - inner) / denom * s * (1.0f - s);
      }
    }
  }
  if (z_scale != 0.0f) {
    const float lse = LogSumExp(logits, c.experts);
    for (int64_t e = 0; e < c.experts; ++e) {
      dlogits[e] += z_scale * 2.0f * lse * Exp(logits[e] - lse);
    }
  }
}

}  // namespace mimo::kernels::router
