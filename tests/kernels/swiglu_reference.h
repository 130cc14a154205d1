// SwiGLU in float64: the reference both the CPU twin and the CUDA kernels are measured against.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

namespace mimo::kernels::testing {

struct SwigluReference {
  std::vector<double> y, dx;
};

// x: (rows, 2*cols) = [gate | up]; dy: (rows, cols), empty for no backward.
inline SwigluReference SwigluFloat64(const std::vector<double>& x, const std::vector<double>& dy,
                                     int64_t rows, int64_t cols) {
  SwigluReference out;
  out.y.resize(rows * cols);
  out.dx.resize(dy.empty() ? 0 : rows * 2 * cols);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      const double gate = x[r * 2 * cols + c], up = x[r * 2 * cols + cols + c];
      const double s = 1.0 / (1.0 + std::exp(-gate));
      out.y[r * cols + c] = gate * s * up;
      if (dy.empty()) continue;
      const double d = dy[r * cols + c];
      out.dx[r * 2 * cols + c] = d * up * s * (1.0 + gate * (1.0 - s));
      out.dx[r * 2 * cols + cols + c] = d * gate * s;
    }
  }
  return out;
}

}  // namespace mimo::kernels::testing
