// RMSNorm in float64: the reference both the CPU twin and the CUDA kernels are measured against.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "tests/kernels/op_test_util.h"

namespace mimo::kernels::testing {

struct RmsNormReference {
  std::vector<double> y, rstd, dx, dweight;
};

// x: (rows, cols), weight: (cols,), dy: (rows, cols) (empty: no backward).
inline RmsNormReference RmsNormFloat64(const std::vector<double>& x,
                                       const std::vector<double>& weight,
                                       const std::vector<double>& dy, int64_t rows, int64_t cols,
                                       double eps) {
  RmsNormReference out;
  out.y.resize(rows * cols);
  out.rstd.resize(rows);
  out.dx.resize(dy.empty() ? 0 : rows * cols);
  out.dweight.assign(dy.empty() ? 0 : cols, 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    double sum = 0;
    for (int64_t c = 0; c < cols; ++c) sum += x[r * cols + c] * x[r * cols + c];
    const double rstd = 1.0 / std::sqrt(sum / cols + eps);
    out.rstd[r] = rstd;
    for (int64_t c = 0; c < cols; ++c) out.y[r * cols + c] = x[r * cols + c] * rstd * weight[c];
    if (dy.empty()) continue;
    double dot = 0;
    for (int64_t c = 0; c < cols; ++c) {
      dot += dy[r * cols + c] * weight[c] * x[r * cols + c] * rstd;
      out.dweight[c] += dy[r * cols + c] * x[r * cols + c] * rstd;
    }
    for (int64_t c = 0; c < cols; ++c) {
      const double xhat = x[r * cols + c] * rstd;
      out.dx[r * cols + c] = rstd * (dy[r * cols + c] * weight[c] - xhat * dot / cols);
    }
  }
  return out;
}

// The size of the terms of RMSNorm's dx: max over elements of rstd * |dy * weight|.
inline double RmsNormDxScale(const std::vector<double>& dy, const std::vector<double>& weight,
                             const std::vector<double>& rstd, int64_t cols) {
  double scale = 1e-30;
  for (size_t i = 0; i < dy.size(); ++i) {
    scale = std::max(scale, rstd[i / cols] * std::abs(dy[i] * weight[i % cols]));
  }
  return scale;
}

}  // namespace mimo::kernels::testing
