// Row-major matrix products: the argument checks and the CPU twin (fp32 accumulation).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
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
