// GELU in float64: the reference both the CPU twin and the CUDA kernels are measured against.
#pragma once

#include <cmath>
#include <vector>

namespace mimo::kernels::testing {

inline std::vector<double> GeluFloat64(const std::vector<double>& x) {
  std::vector<double> y;
  for (double v : x) y.push_back(v * 0.5 * (1.0 + std::erf(v / std::sqrt(2.0))));
  return y;
}

inline std::vector<double> GeluBackwardFloat64(const std::vector<double>& dy,
                                               const std::vector<double>& x) {
  std::vector<double> dx;
  for (size_t i = 0; i < x.size(); ++i) {
    const double cdf = 0.5 * (1.0 + std::erf(x[i] / std::sqrt(2.0)));
    const double pdf = std::exp(-0.5 * x[i] * x[i]) / std::sqrt(2.0 * M_PI);
    dx.push_back(dy[i] * (cdf + x[i] * pdf));
  }
  return dx;
}

}  // namespace mimo::kernels::testing
