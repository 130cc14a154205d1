// LayerNorm over the last dimension, forward and backward: the argument checks and the CPU twins.
#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cpu_elements.h"
#include "kernels/layernorm.h"
#include "kernels/op_checks.h"

namespace mimo::kernels {

absl::Status CheckLayerNorm(const LayerNormParams& p) {
  MIMO_RETURN_IF_ERROR(CheckFloatDType("LayerNorm", p.dtype));
  MIMO_RETURN_IF_ERROR(CheckRowsCols("LayerNorm", p.rows, p.cols));
  if (!(p.eps > 0.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("LayerNorm: eps must be positive, got ", p.eps));
  }
  return CheckBuffers("LayerNorm", p.rows > 0,
                      {{p.x, "x"},
                       {p.weight, "weight"},
                       {p.bias, "bias"},
                       {p.y, "y"},
                       {p.mean, "mean"},
                       {p.rstd, "rstd"}});
}

absl::Status CheckLayerNormBackward(const LayerNormBackwardParams& p) {
  MIMO_RETURN_IF_ERROR(CheckFloatDType("LayerNormBackward", p.dtype));
  MIMO_RETURN_IF_ERROR(CheckRowsCols("LayerNormBackward", p.rows, p.cols));
  return CheckBuffers("LayerNormBackward", p.rows > 0,
                      {{p.dy, "dy"},
                       {p.x, "x"},
                       {p.weight, "weight"},
                       {p.mean, "mean"},
                       {p.rstd, "rstd"},
                       {p.dx, "dx"},
                       {p.dweight, "dweight"},
                       {p.dbias, "dbias"}});
}

absl::Status LayerNormCpu(const LayerNormParams& p) {
  MIMO_RETURN_IF_ERROR(CheckLayerNorm(p));
  for (int64_t r = 0; r < p.rows; ++r) {
    const int64_t base = r * p.cols;
    double sum = 0.0;
    for (int64_t c = 0; c < p.cols; ++c) sum += LoadElement(p.dtype, p.x, base + c);
    const double mean = sum / static_cast<double>(p.cols);
    double var = 0.0;
    for (int64_t c = 0; c < p.cols; ++c) {
      const double d = LoadElement(p.dtype, p.x, base + c) - mean;
      var += d * d;
    }
    const float rstd =
        static_cast<float>(1.0 / std::sqrt(var / static_cast<double>(p.cols) + p.eps));
    const float m = static_cast<float>(mean);
    p.mean[r] = m;
    p.rstd[r] = rstd;
    for (int64_t c = 0; c < p.cols; ++c) {
      const float xhat = (LoadElement(p.dtype, p.x, base + c) - m) * rstd;
      StoreElement(p.dtype, p.y, base + c,
                   xhat * LoadElement(p.dtype, p.weight, c) + LoadElement(p.dtype, p.bias, c));
    }
  }
  return absl::OkStatus();
}

absl::Status LayerNormBackwardCpu(const LayerNormBackwardParams& p) {
  MIMO_RETURN_IF_ERROR(CheckLayerNormBackward(p));
  std::vector<double> dweight(static_cast<size_t>(p.cols), 0.0);
  std::vector<double> dbias(static_cast<size_t>(p.cols), 0.0);
  for (int64_t r = 0; r < p.rows; ++r) {
    const int64_t base = r * p.cols;
    const float mean = p.mean[r], rstd = p.rstd[r];
    double sum_g = 0.0, sum_gx = 0.0;
    for (int64_t c = 0; c < p.cols; ++c) {
      const float xhat = (LoadElement(p.dtype, p.x, base + c) - mean) * rstd;
      const float dy = LoadElement(p.dtype, p.dy, base + c);
      const float g = dy * LoadElement(p.dtype, p.weight, c);
      sum_g += g;
      sum_gx += static_cast<double>(g) * xhat;
      dweight[c] += static_cast<double>(dy) * xhat;
      dbias[c] += dy;
    }
    const float mean_g = static_cast<float>(sum_g / static_cast<double>(p.cols));
    const float mean_gx = static_cast<float>(sum_gx / static_cast<double>(p.cols));
    for (int64_t c = 0; c < p.cols; ++c) {
      const float xhat = (LoadElement(p.dtype, p.x, base + c) - mean) * rstd;
      const float g = LoadElement(p.dtype, p.dy, base + c) * LoadElement(p.dtype, p.weight, c);
      StoreElement(p.dtype, p.dx, base + c, rstd * (g - mean_g - xhat * mean_gx));
    }
  }
  // With no rows the gradients may be null; when given they are still overwritten (zeros).
  for (int64_t c = 0; c < p.cols; ++c) {
    if (p.dweight != nullptr) p.dweight[c] = static_cast<float>(dweight[c]);
    if (p.dbias != nullptr) p.dbias[c] = static_cast<float>(dbias[c]);
  }
  return absl::OkStatus();
}

}  // namespace mimo::kernels
