// MoE token permutation: argument checks and the CPU twins.
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cpu_elements.h"
#include "kernels/moe_permute.h"
#include "kernels/op_checks.h"

namespace mimo::kernels {
namespace {

absl::Status CheckSizes(const char* op, int64_t tokens, int64_t top_k, int64_t hidden) {
  if (tokens < 0 || top_k < 1 || hidden < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": needs tokens >= 0, top_k >= 1 and hidden >= 0, got ", tokens, ", ",
                     top_k, ", ", hidden));
  }
  if (tokens * top_k >= (int64_t{1} << 31)) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": 2^31 (token, choice) pairs or more"));
  }
  return absl::OkStatus();
}

absl::Status CheckCapacity(const char* op, int64_t capacity, int64_t tokens, int64_t top_k) {
  if (capacity < tokens * top_k || capacity >= (int64_t{1} << 31)) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": capacity ", capacity, " is below the ",
                                                   tokens * top_k, " pairs or reaches 2^31"));
  }
  return absl::OkStatus();
}

// The fp32 dot product of two rows in the order the CUDA kernel takes: lane l of a warp sums
// elements l * W .. l * W + W - 1 of each stride of 32 * W (W = the elements of a 16-byte vector:
// 8 bf16, 4 f32) in order; then the 32 partial sums meet in an xor butterfly.
float WarpOrderDot(DType dtype, const void* a, int64_t a_row, const void* b, int64_t b_row,
                   int64_t n) {
  const int64_t w = 16 / static_cast<int64_t>(DTypeSize(dtype));
  float lane[32] = {};
  for (int64_t c = 0; c < n; ++c) {
    lane[c % (32 * w) / w] +=
        LoadElement(dtype, a, a_row * n + c) * LoadElement(dtype, b, b_row * n + c);
  }
  for (int offset = 16; offset > 0; offset /= 2) {
    float next[32];
    for (int l = 0; l < 32; ++l) next[l] = lane[l] + lane[l ^ offset];
    for (int l = 0; l < 32; ++l) lane[l] = next[l];
  }
  return lane[0];
}

}  // namespace

int64_t MoePermuteCapacity(int64_t tokens, int64_t top_k, int64_t experts, int64_t align) {
  return tokens * top_k + experts * (align - 1);
}

absl::Status CheckMoePermuteMap(const MoePermuteMapParams& p) {
  MIMO_RETURN_IF_ERROR(CheckSizes("MoePermuteMap", p.tokens, p.top_k, 0));
  if (p.experts < 1 || p.experts > 1024 || p.align < 1 || p.align > 1024) {
    return absl::InvalidArgumentError(
        absl::StrCat("MoePermuteMap: needs experts in [1, 1024] and align in [1, 1024], got ",
                     p.experts, " and ", p.align));
  }
  const int64_t need = MoePermuteCapacity(p.tokens, p.top_k, p.experts, p.align);
  if (p.capacity < need || p.capacity >= (int64_t{1} << 31)) {
    return absl::InvalidArgumentError(absl::StrCat("MoePermuteMap: capacity ", p.capacity,
                                                   " is below MoePermuteCapacity (", need,
                                                   ") or reaches 2^31"));
  }
  MIMO_RETURN_IF_ERROR(CheckBuffers("MoePermuteMap", true, {{p.offsets, "offsets"}}));
  MIMO_RETURN_IF_ERROR(
      CheckBuffers("MoePermuteMap", p.capacity > 0, {{p.pair_of_row, "pair_of_row"}}));
  return CheckBuffers("MoePermuteMap", p.tokens > 0, {{p.indices, "indices"}, {p.rows, "rows"}});
}

absl::Status CheckMoePermute(const MoePermuteParams& p) {
  MIMO_RETURN_IF_ERROR(CheckFloatDType("MoePermute", p.dtype));
  MIMO_RETURN_IF_ERROR(CheckSizes("MoePermute", p.tokens, p.top_k, p.hidden));
  // Any number of rows: as a plain row gather (top_k 1) it may drop rows of x.
  MIMO_RETURN_IF_ERROR(CheckCapacity("MoePermute", p.capacity, 0, p.top_k));
  MIMO_RETURN_IF_ERROR(CheckBuffers("MoePermute", p.tokens > 0 && p.hidden > 0, {{p.x, "x"}}));
  return CheckBuffers("MoePermute", p.capacity > 0 && p.hidden > 0,
                      {{p.pair_of_row, "pair_of_row"}, {p.out, "out"}});
}

absl::Status CheckMoePermuteBackward(const MoePermuteBackwardParams& p) {
  MIMO_RETURN_IF_ERROR(CheckFloatDType("MoePermuteBackward", p.dtype));
  MIMO_RETURN_IF_ERROR(CheckSizes("MoePermuteBackward", p.tokens, p.top_k, p.hidden));
  return CheckBuffers("MoePermuteBackward", p.tokens > 0 && p.hidden > 0,
                      {{p.dout, "dout"}, {p.rows, "rows"}, {p.dx, "dx"}});
}

absl::Status CheckMoeUnpermute(const MoeUnpermuteParams& p) {
  MIMO_RETURN_IF_ERROR(CheckFloatDType("MoeUnpermute", p.dtype));
  MIMO_RETURN_IF_ERROR(CheckSizes("MoeUnpermute", p.tokens, p.top_k, p.hidden));
  return CheckBuffers("MoeUnpermute", p.tokens > 0 && p.hidden > 0,
                      {{p.h, "h"}, {p.rows, "rows"}, {p.probs, "probs"}, {p.y, "y"}});
}

absl::Status CheckMoeUnpermuteBackward(const MoeUnpermuteBackwardParams& p) {
  MIMO_RETURN_IF_ERROR(CheckFloatDType("MoeUnpermuteBackward", p.dtype));
  MIMO_RETURN_IF_ERROR(CheckSizes("MoeUnpermuteBackward", p.tokens, p.top_k, p.hidden));
  MIMO_RETURN_IF_ERROR(CheckCapacity("MoeUnpermuteBackward", p.capacity, p.tokens, p.top_k));
  MIMO_RETURN_IF_ERROR(CheckBuffers("MoeUnpermuteBackward", p.capacity > 0 && p.hidden > 0,
                                    {{p.pair_of_row, "pair_of_row"}, {p.dh, "dh"}}));
  return CheckBuffers(
      "MoeUnpermuteBackward", p.tokens > 0,
      {{p.dy, "dy"}, {p.h, "h"}, {p.rows, "rows"}, {p.probs, "probs"}, {p.dprobs, "dprobs"}});
}

absl::Status MoePermuteMapCpu(const MoePermuteMapParams& p) {
  MIMO_RETURN_IF_ERROR(CheckMoePermuteMap(p));
  const int64_t pairs = p.tokens * p.top_k;
  std::vector<int64_t> count(p.experts, 0);
  for (int64_t i = 0; i < pairs; ++i) {
    const int32_t e = p.indices[i];
    if (e == -1) continue;
    if (e < 0 || e >= p.experts) {
      return absl::InvalidArgumentError(
          absl::StrCat("MoePermuteMap: pair ", i, " chose expert ", e, " of ", p.experts));
    }
    ++count[e];
  }
  p.offsets[0] = 0;
  for (int64_t e = 0; e < p.experts; ++e) {
    p.offsets[e + 1] =
        static_cast<int32_t>(p.offsets[e] + (count[e] + p.align - 1) / p.align * p.align);
  }
  for (int64_t r = 0; r < p.capacity; ++r) p.pair_of_row[r] = -1;
  std::vector<int64_t> next(p.offsets, p.offsets + p.experts);
  for (int64_t i = 0; i < pairs; ++i) {
    if (p.indices[i] < 0) {
      p.rows[i] = -1;
      continue;
    }
    const int64_t row = next[p.indices[i]]++;
    p.rows[i] = static_cast<int32_t>(row);
    p.pair_of_row[row] = static_cast<int32_t>(i);
  }
  return absl::OkStatus();
}

absl::Status MoePermuteCpu(const MoePermuteParams& p) {
  MIMO_RETURN_IF_ERROR(CheckMoePermute(p));
  for (int64_t r = 0; r < p.capacity; ++r) {
    const int32_t pair = p.pair_of_row[r];
    for (int64_t c = 0; c < p.hidden; ++c) {
      const float v = pair < 0 ? 0.0f : LoadElement(p.dtype, p.x, pair / p.top_k * p.hidden + c);
      StoreElement(p.dtype, p.out, r * p.hidden + c, v);
    }
  }
  return absl::OkStatus();
}

absl::Status MoePermuteBackwardCpu(const MoePermuteBackwardParams& p) {
  MIMO_RETURN_IF_ERROR(CheckMoePermuteBackward(p));
  for (int64_t t = 0; t < p.tokens; ++t) {
    for (int64_t c = 0; c < p.hidden; ++c) {
      float sum = 0.0f;
      for (int64_t j = 0; j < p.top_k; ++j) {
        const int32_t row = p.rows[t * p.top_k + j];
        if (row >= 0) sum += LoadElement(p.dtype, p.dout, row * p.hidden + c);
      }
      StoreElement(p.dtype, p.dx, t * p.hidden + c, sum);
    }
  }
  return absl::OkStatus();
}

absl::Status MoeUnpermuteCpu(const MoeUnpermuteParams& p) {
  MIMO_RETURN_IF_ERROR(CheckMoeUnpermute(p));
  for (int64_t t = 0; t < p.tokens; ++t) {
    for (int64_t c = 0; c < p.hidden; ++c) {
      float sum = 0.0f;
      for (int64_t j = 0; j < p.top_k; ++j) {
        const int32_t row = p.rows[t * p.top_k + j];
        if (row < 0) continue;
        const float product =
            p.probs[t * p.top_k + j] * LoadElement(p.dtype, p.h, row * p.hidden + c);
        sum += product;
      }
      StoreElement(p.dtype, p.y, t * p.hidden + c, sum);
    }
  }
  return absl::OkStatus();
}

absl::Status MoeUnpermuteBackwardCpu(const MoeUnpermuteBackwardParams& p) {
  MIMO_RETURN_IF_ERROR(CheckMoeUnpermuteBackward(p));
  for (int64_t r = 0; r < p.capacity; ++r) {
    const int32_t pair = p.pair_of_row[r];
    for (int64_t c = 0; c < p.hidden; ++c) {
      const float v =
          pair < 0 ? 0.0f
                   : p.probs[pair] * LoadElement(p.dtype, p.dy, pair / p.top_k * p.hidden + c);
      StoreElement(p.dtype, p.dh, r * p.hidden + c, v);
    }
  }
  for (int64_t i = 0; i < p.tokens * p.top_k; ++i) {
    p.dprobs[i] =
        p.rows[i] < 0 ? 0.0f : WarpOrderDot(p.dtype, p.dy, i / p.top_k, p.h, p.rows[i], p.hidden);
  }
  return absl::OkStatus();
}

}  // namespace mimo::kernels
