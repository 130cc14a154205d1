// RMSNorm over the last dimension, forward and backward: the argument checks and the CPU twins.
#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cpu_elements.h"
#include "kernels/op_checks.h"
#include "kernels/rmsnorm.h"

namespace mimo::kernels {

absl::Status CheckRmsNorm(const RmsNormParams& p) {
  MIMO_RETURN_IF_ERROR(CheckFloatDType("RmsNorm", p.dtype));
  MIMO_RETURN_IF_ERROR(CheckRowsCols("RmsNorm", p.rows, p.cols));
  if (!(p.eps > 0.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("RmsNorm: eps must be positive, got ", p.eps));
  }
  return CheckBuffers("RmsNorm", p.rows > 0,
                      {{p.x, "x"}, {p.weight, "weight"}, {p.y, "y"}, {p.rstd, "rstd"}});
}

absl::Status CheckRmsNormBackward(const RmsNormBackwardParams& p) {
  MIMO_RETURN_IF_ERROR(CheckFloatDType("RmsNormBackward", p.dtype));
  MIMO_RETURN_IF_ERROR(CheckRowsCols("RmsNormBackward", p.rows, p.cols));
  return CheckBuffers("RmsNormBackward", p.rows > 0,
                      {{p.dy, "dy"},
                       {p.x, "x"},
                       {p.weight, "weight"},
                       {p.rstd, "rstd"},
                       {p.dx, "dx"}});
}

absl::Status RmsNormCpu(const RmsNormParams& p) {
  MIMO_RETURN_IF_ERROR(CheckRmsNorm(p));
  for (int64_t r = 0; r < p.rows; ++r) {
    const int64_t base = r * p.cols;
    double sum = 0.0;  // Row sums in double: the oracle should not lose digits over long rows.
    for (int64_t c = 0; c < p.cols; ++c) {
      const float v = LoadElement(p.dtype, p.x, base + c);
      sum += static_cast<double>(v) * v;
    }
    const float rstd =
        static_cast<float>(1.0 / std::sqrt(sum / static_cast<double>(p.cols) + p.eps));
    p.rstd[r] = rstd;
    for (int64_t c = 0; c < p.cols; ++c) {
      StoreElement(p.dtype, p.y, base + c,
                   LoadElement(p.dtype, p.x, base + c) * rstd * LoadElement(p.dtype, p.weight, c));
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
      const float xhat = LoadElement(p.dtype, p.x, base + c) * rstd;
      const float dy = LoadElement(p.dtype, p.dy, base + c);
      dot += static_cast<double>(dy * LoadElement(p.dtype, p.weight, c)) * xhat;
      dweight[c] += static_cast<double>(dy) * xhat;
    }
    const float mean = static_cast<float>(dot / static_cast<double>(p.cols));
    for (int64_t c = 0; c < p.cols; ++c) {
      const float xhat = LoadElement(p.dtype, p.x, base + c) * rstd;
      const float g = LoadElement(p.dtype, p.dy, base + c) * LoadElement(p.dtype, p.weight, c);
      StoreElement(p.dtype, p.dx, base + c, rstd * (g - xhat * mean));
    }
  }
  // With no rows dweight may be null; when given it is still overwritten (with zeros).
  if (p.dweight != nullptr) {
    for (int64_t c = 0; c < p.cols; ++c) p.dweight[c] = static_cast<float>(dweight[c]);
  }
  return absl::OkStatus();
}

}  // namespace mimo::kernels
