// Row-major matrix products: the argument checks and the CPU twin (fp32 accumulation).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <iterator>
#include <limits>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cpu_elements.h"
#include "kernels/gemm.h"
#include "kernels/op_checks.h"

namespace mimo::kernels {
namespace {

constexpr float kSqrt2OverPi = 0.79788456080286536f;
constexpr float kTanhCubic = 0.044715f;

// op(x) of a (rows, cols) product operand as fp32, row-major: x is (rows, cols), or (cols, rows)
// when transposed.
std::vector<float> Operand(DType dtype, const void* x, bool transposed, int64_t rows,
                           int64_t cols) {
  std::vector<float> out(rows * cols);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      out[r * cols + c] = LoadElement(dtype, x, transposed ? c * rows + r : r * cols + c);
    }
  }
  return out;
}

// Byte range [begin, end) of a (rows, cols) operand of `dtype` at `p`.
struct Range {
  uintptr_t begin, end;
  size_t problem;
};

Range RangeOf(const void* p, DType dtype, int64_t rows, int64_t cols, size_t problem) {
  const auto begin = reinterpret_cast<uintptr_t>(p);
  return {begin, begin + static_cast<uintptr_t>(rows * cols) * DTypeSize(dtype), problem};
}

}  // namespace

absl::Status CheckGemm(const GemmParams& p) {
  MIMO_RETURN_IF_ERROR(CheckFloatDType("Gemm", p.ab_dtype));
  if (p.d_dtype != p.ab_dtype && p.d_dtype != DType::kF32) {
    return absl::InvalidArgumentError(absl::StrCat("Gemm: d dtype ", DTypeName(p.d_dtype),
                                                   " is not supported with a and b in ",
                                                   DTypeName(p.ab_dtype), " (same, or f32)"));
  }
  constexpr int64_t kMax = std::numeric_limits<int32_t>::max();
  if (p.m < 0 || p.n < 0 || p.k < 0 || p.m > kMax || p.n > kMax || p.k > kMax) {
    return absl::InvalidArgumentError(
        absl::StrCat("Gemm: bad shape m ", p.m, ", n ", p.n, ", k ", p.k));
  }
  const bool activation = p.activation != GemmActivation::kNone;
  if (p.accumulate && (p.bias != nullptr || activation)) {
    return absl::InvalidArgumentError("Gemm: accumulation cannot take a bias or an activation");
  }
  const bool any_output = p.m > 0 && p.n > 0;
  if (any_output && p.k == 0 && (p.bias != nullptr || activation)) {
    return absl::InvalidArgumentError("Gemm: k = 0 cannot take a bias or an activation");
  }
  MIMO_RETURN_IF_ERROR(CheckBuffers("Gemm", any_output && p.k > 0, {{p.a, "a"}, {p.b, "b"}}));
  MIMO_RETURN_IF_ERROR(CheckBuffers("Gemm", any_output, {{p.d, "d"}}));
  return CheckBuffers("Gemm", any_output && activation, {{p.pre_activation, "pre_activation"}});
}

absl::Status CheckGemmBatch(absl::Span<const GemmParams> problems) {
  std::vector<Range> writes, reads;
  for (size_t i = 0; i < problems.size(); ++i) {
    const GemmParams& p = problems[i];
    const auto named = [i](const absl::Status& s) {
      return absl::Status(s.code(), absl::StrCat("GemmBatch: product ", i, ": ", s.message()));
    };
    if (absl::Status s = CheckGemm(p); !s.ok()) return named(s);
    if (p.bias != nullptr || p.activation != GemmActivation::kNone) {
      return named(absl::InvalidArgumentError("a batch takes no bias and no activation"));
    }
    if (p.m == 0 || p.n == 0) continue;
    writes.push_back(RangeOf(p.d, p.d_dtype, p.m, p.n, i));
    if (p.k == 0) continue;
    reads.push_back(RangeOf(p.a, p.ab_dtype, p.m, p.k, i));
    reads.push_back(RangeOf(p.b, p.ab_dtype, p.k, p.n, i));
  }
  const auto by_begin = [](const Range& a, const Range& b) { return a.begin < b.begin; };
  std::sort(writes.begin(), writes.end(), by_begin);
  for (size_t i = 1; i < writes.size(); ++i) {
    if (writes[i].begin < writes[i - 1].end) {
      return absl::InvalidArgumentError(absl::StrCat("GemmBatch: the outputs of products ",
                                                     writes[i - 1].problem, " and ",
                                                     writes[i].problem, " overlap"));
    }
  }
  // An input overlaps some output if it overlaps the last output starting before its end: the
  // outputs are disjoint, so that one ends last of those that start before the input ends.
  for (const Range& r : reads) {
    auto it = std::lower_bound(writes.begin(), writes.end(), r.end,
                               [](const Range& w, uintptr_t end) { return w.begin < end; });
    if (it != writes.begin() && std::prev(it)->end > r.begin) {
      return absl::InvalidArgumentError(absl::StrCat("GemmBatch: an input of product ", r.problem,
                                                     " overlaps the output of product ",
                                                     std::prev(it)->problem));
    }
  }
  return absl::OkStatus();
}

absl::Status GemmBatchCpu(absl::Span<const GemmParams> problems) {
  MIMO_RETURN_IF_ERROR(CheckGemmBatch(problems));
  for (const GemmParams& p : problems) MIMO_RETURN_IF_ERROR(GemmCpu(p));
  return absl::OkStatus();
}

absl::Status GemmCpu(const GemmParams& p) {
  MIMO_RETURN_IF_ERROR(CheckGemm(p));
  if (p.m == 0 || p.n == 0) return absl::OkStatus();
  const std::vector<float> a = Operand(p.ab_dtype, p.a, p.transpose_a, p.m, p.k);  // (m, k)
  const std::vector<float> b = Operand(p.ab_dtype, p.b, p.transpose_b, p.k, p.n);  // (k, n)
  // Per row: the products summed on their own, then the bias (or the old d) added once, as
  // cuBLASLt's epilogue does.
  std::vector<float> acc(p.n);
  for (int64_t i = 0; i < p.m; ++i) {
    std::fill(acc.begin(), acc.end(), 0.0f);
    for (int64_t l = 0; l < p.k; ++l) {
      const float av = a[i * p.k + l];
      const float* brow = &b[l * p.n];
      for (int64_t j = 0; j < p.n; ++j) acc[j] += av * brow[j];
    }
    for (int64_t j = 0; j < p.n; ++j) {
      const int64_t at = i * p.n + j;
      const float base = p.accumulate        ? LoadElement(p.d_dtype, p.d, at)
                         : p.bias != nullptr ? LoadElement(p.d_dtype, p.bias, j)
                                             : 0.0f;
      const float z = base + acc[j];
      if (p.activation == GemmActivation::kGeluTanh) {
        StoreElement(p.d_dtype, p.pre_activation, at, z);
        StoreElement(p.d_dtype, p.d, at,
                     0.5f * z * (1.0f + std::tanh(kSqrt2OverPi * (z + kTanhCubic * z * z * z))));
      } else {
        StoreElement(p.d_dtype, p.d, at, z);
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace mimo::kernels
