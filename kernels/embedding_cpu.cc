// Embedding lookup, forward and backward: the argument checks and the CPU twins.
#include <algorithm>
#include <numeric>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cpu_elements.h"
#include "kernels/embedding.h"
#include "kernels/op_checks.h"

namespace mimo::kernels {
namespace {

constexpr int64_t kMaxIndex = 0x7fffffff;

absl::Status CheckSizes(const char* op, int64_t vocab, int64_t tokens, int64_t dim,
                        int64_t first_id) {
  if (vocab < 0 || tokens < 0 || dim < 0 || vocab > kMaxIndex || tokens > kMaxIndex ||
      first_id < 0 || first_id + vocab > kMaxIndex) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": bad sizes (vocab ", vocab, ", tokens ",
                                                   tokens, ", dim ", dim, ", first_id ", first_id,
                                                   ")"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckEmbedding(const EmbeddingParams& p) {
  MIMO_RETURN_IF_ERROR(CheckFloatDType("Embedding", p.dtype));
  MIMO_RETURN_IF_ERROR(CheckSizes("Embedding", p.vocab, p.tokens, p.dim, p.first_id));
  return CheckBuffers("Embedding", p.tokens * p.dim > 0,
                      {{p.table, "table"}, {p.ids, "ids"}, {p.out, "out"}});
}

absl::Status CheckEmbeddingBackward(const EmbeddingBackwardParams& p) {
  MIMO_RETURN_IF_ERROR(CheckFloatDType("EmbeddingBackward", p.dtype));
  MIMO_RETURN_IF_ERROR(CheckSizes("EmbeddingBackward", p.vocab, p.tokens, p.dim, p.first_id));
  MIMO_RETURN_IF_ERROR(
      CheckBuffers("EmbeddingBackward", p.vocab * p.dim > 0, {{p.dtable, "dtable"}}));
  return CheckBuffers("EmbeddingBackward", p.tokens * p.dim > 0,
                      {{p.dout, "dout"}, {p.ids, "ids"}});
}

absl::Status EmbeddingCpu(const EmbeddingParams& p) {
  MIMO_RETURN_IF_ERROR(CheckEmbedding(p));
  if (p.dim == 0) return absl::OkStatus();
  for (int64_t t = 0; t < p.tokens; ++t) {
    const int64_t id = p.ids[t] - p.first_id;  // The table's row.
    const bool bad = id < 0 || id >= p.vocab;
    if (bad && p.bad_ids != nullptr) ++*p.bad_ids;
    for (int64_t d = 0; d < p.dim; ++d) {
      StoreElement(p.dtype, p.out, t * p.dim + d,
                   bad ? 0.0f : LoadElement(p.dtype, p.table, id * p.dim + d));
    }
  }
  return absl::OkStatus();
}

absl::Status EmbeddingBackwardCpu(const EmbeddingBackwardParams& p) {
  MIMO_RETURN_IF_ERROR(CheckEmbeddingBackward(p));
  if (!p.accumulate && p.vocab * p.dim > 0) std::fill_n(p.dtable, p.vocab * p.dim, 0.0f);
  if (p.dim == 0) return absl::OkStatus();
  // The tokens in (id, t) order: a run of equal ids per table row, its sorted positions cut into
  // pieces where a chunk ends, as the CUDA kernels do.
  std::vector<int32_t> order(static_cast<size_t>(p.tokens));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return p.ids[a] < p.ids[b]; });
  std::vector<float> piece(static_cast<size_t>(p.dim));
  for (int64_t i = 0; i < p.tokens;) {
    const int32_t key = p.ids[order[i]];
    int64_t end = i + 1;
    while (end < p.tokens && p.ids[order[end]] == key) ++end;
    const int64_t id = key - p.first_id;  // The table's row.
    if (id < 0 || id >= p.vocab) {
      i = end;
      continue;
    }
    float* row = p.dtable + id * p.dim;
    while (i < end) {
      const int64_t stop =
          std::min(end, (i / kEmbeddingBackwardChunk + 1) * kEmbeddingBackwardChunk);
      std::fill(piece.begin(), piece.end(), 0.0f);
      for (; i < stop; ++i) {
        const int64_t t = order[i];
        for (int64_t d = 0; d < p.dim; ++d) piece[d] += LoadElement(p.dtype, p.dout, t * p.dim + d);
      }
      for (int64_t d = 0; d < p.dim; ++d) row[d] += piece[d];
    }
  }
  return absl::OkStatus();
}

}  // namespace mimo::kernels
