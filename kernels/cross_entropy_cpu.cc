// Chunked softmax cross-entropy: the argument checks and the CPU twins.
#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cpu_elements.h"
#include "kernels/cross_entropy.h"
#include "kernels/op_checks.h"

namespace mimo::kernels {
namespace {

absl::Status CheckState(const char* op, const CrossEntropyState& s, int64_t tokens) {
  return CheckBuffers(
      op, tokens > 0,
      {{s.max, "state.max"}, {s.sum, "state.sum"}, {s.target_logit, "state.target_logit"}});
}

}  // namespace

absl::Status CheckCrossEntropyChunk(const CrossEntropyChunkParams& p) {
  MIMO_RETURN_IF_ERROR(CheckFloatDType("CrossEntropyChunk", p.dtype));
  MIMO_RETURN_IF_ERROR(CheckRowsCols("CrossEntropyChunk", p.tokens, p.chunk));
  if (p.vocab_offset < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("CrossEntropyChunk: negative vocab_offset ", p.vocab_offset));
  }
  MIMO_RETURN_IF_ERROR(CheckState("CrossEntropyChunk", p.state, p.tokens));
  return CheckBuffers("CrossEntropyChunk", p.tokens > 0,
                      {{p.logits, "logits"}, {p.targets, "targets"}});
}

absl::Status CheckCrossEntropyBackward(const CrossEntropyBackwardParams& p) {
  MIMO_RETURN_IF_ERROR(CheckFloatDType("CrossEntropyBackward", p.dtype));
  MIMO_RETURN_IF_ERROR(CheckRowsCols("CrossEntropyBackward", p.tokens, p.chunk));
  if (p.vocab_offset < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("CrossEntropyBackward: negative vocab_offset ", p.vocab_offset));
  }
  return CheckBuffers("CrossEntropyBackward", p.tokens > 0,
                      {{p.logits, "logits"},
                       {p.targets, "targets"},
                       {p.lse, "lse"},
                       {p.dloss, "dloss"},
                       {p.dlogits, "dlogits"}});
}

absl::Status CrossEntropyInitCpu(const CrossEntropyState& s, int64_t tokens) {
  MIMO_RETURN_IF_ERROR(CheckState("CrossEntropyInit", s, tokens));
  std::fill_n(s.max, tokens, -std::numeric_limits<float>::infinity());
  std::fill_n(s.sum, tokens, 0.0f);
  std::fill_n(s.target_logit, tokens, 0.0f);
  return absl::OkStatus();
}

absl::Status CrossEntropyChunkCpu(const CrossEntropyChunkParams& p) {
  MIMO_RETURN_IF_ERROR(CheckCrossEntropyChunk(p));
  for (int64_t t = 0; t < p.tokens; ++t) {
    const int64_t base = t * p.chunk;
    float chunk_max = -std::numeric_limits<float>::infinity();
    for (int64_t c = 0; c < p.chunk; ++c) {
      chunk_max = std::max(chunk_max, LoadElement(p.dtype, p.logits, base + c));
    }
    const float new_max = std::max(p.state.max[t], chunk_max);
    double sum = 0.0;
    for (int64_t c = 0; c < p.chunk; ++c) {
      sum += std::exp(LoadElement(p.dtype, p.logits, base + c) - new_max);
    }
    p.state.sum[t] = p.state.sum[t] * std::exp(p.state.max[t] - new_max) + static_cast<float>(sum);
    p.state.max[t] = new_max;
    const int64_t target = p.targets[t];
    if (target >= p.vocab_offset && target < p.vocab_offset + p.chunk) {
      p.state.target_logit[t] = LoadElement(p.dtype, p.logits, base + target - p.vocab_offset);
    }
  }
  return absl::OkStatus();
}

absl::Status CrossEntropyFinishCpu(const CrossEntropyFinishParams& p) {
  MIMO_RETURN_IF_ERROR(CheckState("CrossEntropyFinish", p.state, p.tokens));
  MIMO_RETURN_IF_ERROR(CheckBuffers("CrossEntropyFinish", p.tokens > 0,
                                    {{p.targets, "targets"}, {p.loss, "loss"}, {p.lse, "lse"}}));
  for (int64_t t = 0; t < p.tokens; ++t) {
    const float lse = std::log(p.state.sum[t]) + p.state.max[t];
    p.lse[t] = lse;
    p.loss[t] = p.targets[t] < 0 ? 0.0f : lse - p.state.target_logit[t];
  }
  return absl::OkStatus();
}

absl::Status CrossEntropyBackwardCpu(const CrossEntropyBackwardParams& p) {
  MIMO_RETURN_IF_ERROR(CheckCrossEntropyBackward(p));
  for (int64_t t = 0; t < p.tokens; ++t) {
    const int64_t base = t * p.chunk;
    const int64_t target = p.targets[t];
    const float scale = target < 0 ? 0.0f : p.dloss[t];
    for (int64_t c = 0; c < p.chunk; ++c) {
      const float prob = std::exp(LoadElement(p.dtype, p.logits, base + c) - p.lse[t]);
      const float onehot = target == p.vocab_offset + c ? 1.0f : 0.0f;
      StoreElement(p.dtype, p.dlogits, base + c, scale * (prob - onehot));
    }
  }
  return absl::OkStatus();
}

}  // namespace mimo::kernels
