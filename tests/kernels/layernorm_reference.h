// LayerNorm in float64: the reference both the CPU twin and the CUDA kernels are measured against.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace mimo::kernels::testing {

struct LayerNormReference {
  std::vector<double> y, mean, rstd, dx, dweight, dbias;
  double dx_scale = 0;  // max over elements of rstd * |dy * weight|: the size of dx's terms.
};

inline LayerNormReference LayerNormFloat64(const std::vector<double>& x,
                                           const std::vector<double>& weight,
                                           const std::vector<double>& bias,
                                           const std::vector<double>& dy, int64_t rows,
                                           int64_t cols, double eps) {
  LayerNormReference out;
  out.y.resize(rows * cols);
  out.mean.resize(rows);
  out.rstd.resize(rows);
  out.dx.resize(rows * cols);
  out.dweight.assign(cols, 0.0);
  out.dbias.assign(cols, 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    const double* xr = &x[r * cols];
    double mean = 0;
    for (int64_t c = 0; c < cols; ++c) mean += xr[c];
    mean /= cols;
    double var = 0;
    for (int64_t c = 0; c < cols; ++c) var += (xr[c] - mean) * (xr[c] - mean);
    const double rstd = 1.0 / std::sqrt(var / cols + eps);
    out.mean[r] = mean;
    out.rstd[r] = rstd;
    double mean_g = 0, mean_gx = 0;
    for (int64_t c = 0; c < cols; ++c) {
      const double xhat = (xr[c] - mean) * rstd, d = dy[r * cols + c], g = d * weight[c];
      out.y[r * cols + c] = xhat * weight[c] + bias[c];
      mean_g += g / cols;
      mean_gx += g * xhat / cols;
      out.dweight[c] += d * xhat;
      out.dbias[c] += d;
      out.dx_scale = std::max(out.dx_scale, rstd * std::abs(g));
    }
    for (int64_t c = 0; c < cols; ++c) {
      const double xhat = (xr[c] - mean) * rstd, g = dy[r * cols + c] * weight[c];
      out.dx[r * cols + c] = rstd * (g - mean_g - xhat * mean_gx);
    }
  }
  return out;
}

}  // namespace mimo::kernels::testing
