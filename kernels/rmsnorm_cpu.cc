// RMSNorm over the last dimension, forward and backward: the argument checks and the CPU twins.
#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/bfloat16.h"
#include "common/status_macros.h"
#include "kernels/rmsnorm.h"

namespace mimo::kernels {
namespace {

absl::Status CheckCommon(const char* op, DType dtype, int64_t rows, int64_t cols) {
  if (dtype != DType::kBF16 && dtype != DType::kF32) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": dtype ", DTypeName(dtype), " is not supported (bf16 or f32)"));
  }
  if (rows < 0 || cols < 0 || (rows > 0 && cols == 0)) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": bad shape (", rows, ", ", cols, ")"));
  }
  return absl::OkStatus();
}

absl::Status CheckPointers(const char* op, int64_t rows,
                           std::initializer_list<std::pair<const void*, const char*>> buffers) {
  if (rows == 0) return absl::OkStatus();
  for (const auto& [ptr, name] : buffers) {
    if (ptr == nullptr) return absl::InvalidArgumentError(absl::StrCat(op, ": ", name, " is null"));
  }
  return absl::OkStatus();
}

float Load(DType dtype, const void* base, int64_t i) {
  return dtype == DType::kF32 ? static_cast<const float*>(base)[i]
                              : BFloat16ToFloat(static_cast<const uint16_t*>(base)[i]);
}

void Store(DType dtype, void* base, int64_t i, float v) {
  if (dtype == DType::kF32) {
    static_cast<float*>(base)[i] = v;
  } else {
    static_cast<uint16_t*>(base)[i] = FloatToBFloat16(v);
  }
}

}  // namespace

absl::Status CheckRmsNorm(const RmsNormParams& p) {
  MIMO_RETURN_IF_ERROR(CheckCommon("RmsNorm", p.dtype, p.rows, p.cols));
  if (!(p.eps > 0.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("RmsNorm: eps must be positive, got ", p.eps));
  }
  return CheckPointers("RmsNorm", p.rows,
                       {{p.x, "x"}, {p.weight, "weight"}, {p.y, "y"}, {p.rstd, "rstd"}});
}

absl::Status CheckRmsNormBackward(const RmsNormBackwardParams& p) {
  MIMO_RETURN_IF_ERROR(CheckCommon("RmsNormBackward", p.dtype, p.rows, p.cols));
  return CheckPointers("RmsNormBackward", p.rows,
                       {{p.dy, "dy"},
                        {p.x, "x"},
                        {p.weight, "weight"},
                        {p.rstd, "rstd"},
                        {p.dx, "dx"},
                        {p.dweight, "dweight"}});
}

absl::Status RmsNormCpu(const RmsNormParams& p) {
  MIMO_RETURN_IF_ERROR(CheckRmsNorm(p));
  for (int64_t r = 0; r < p.rows; ++r) {
    const int64_t base = r * p.cols;
    double sum = 0.0;  // Row sums in double: the oracle should not lose digits over long rows.
    for (int64_t c = 0; c < p.cols; ++c) {
      const float v = Load(p.dtype, p.x, base + c);
      sum += static_cast<double>(v) * v;
    }
    const float rstd =
        static_cast<float>(1.0 / std::sqrt(sum / static_cast<double>(p.cols) + p.eps));
    p.rstd[r] = rstd;
    for (int64_t c = 0; c < p.cols; ++c) {
      Store(p.dtype, p.y, base + c,
            Load(p.dtype, p.x, base + c) * rstd * Load(p.dtype, p.weight, c));
    }
  }
  return absl::OkStatus();
}

absl::Status RmsNormBackwardCpu(const RmsNormBackwardParams& p) {
  MIMO_RETURN_IF_ERROR(CheckRmsNormBackward(p));
  std::vector<double> dweight(static_cast<size_t>(p.cols), 0.0);
  for (int64_t r = 0; r < p.rows; ++r) {
    const int64_t base = r * p.cols;
    const float rstd = p.rstd[r];
    double dot = 0.0;  // sum(g * xhat), in double as above.
    for (int64_t c = 0; c < p.cols; ++c) {
      const float xhat = Load(p.dtype, p.x, base + c) * rstd;
      const float dy = Load(p.dtype, p.dy, base + c);
      dot += static_cast<double>(dy * Load(p.dtype, p.weight, c)) * xhat;
      dweight[c] += static_cast<double>(dy) * xhat;
    }
    const float mean = static_cast<float>(dot / static_cast<double>(p.cols));
    for (int64_t c = 0; c < p.cols; ++c) {
      const float xhat = Load(p.dtype, p.x, base + c) * rstd;
      const float g = Load(p.dtype, p.dy, base + c) * Load(p.dtype, p.weight, c);
      Store(p.dtype, p.dx, base + c, rstd * (g - xhat * mean));
    }
  }
  // With no rows dweight may be null; when given it is still overwritten (with zeros).
  if (p.dweight != nullptr) {
    for (int64_t c = 0; c < p.cols; ++c) p.dweight[c] = static_cast<float>(dweight[c]);
  }
  return absl::OkStatus();
}

}  // namespace mimo::kernels
