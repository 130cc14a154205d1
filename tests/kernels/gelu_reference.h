// GELU in float64 (exact and tanh-approximated): the reference both the CPU twin and the CUDA
// kernels are measured against.
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/gelu.h"

namespace mimo::kernels::testing {

// The value and derivative of GELU at x.
inline double GeluOfFloat64(GeluApproximation a, double x) {
  if (a == GeluApproximation::kNone) return x * 0.5 * (1.0 + std::erf(x / std::sqrt(2.0)));
  const double c = std::sqrt(2.0 / M_PI);
  return 0.5 * x * (1.0 + std::tanh(c * (x + 0.044715 * x * x * x)));
}

inline double GeluDerivativeFloat64(GeluApproximation a, double x) {
  if (a == GeluApproximation::kNone) {
    const double cdf = 0.5 * (1.0 + std::erf(x / std::sqrt(2.0)));
    const double pdf = std::exp(-0.5 * x * x) / std::sqrt(2.0 * M_PI);
    return cdf + x * pdf;
  }
  const double c = std::sqrt(2.0 / M_PI);
  const double t = std::tanh(c * (x + 0.044715 * x * x * x));
  return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * c * (1.0 + 3.0 * 0.044715 * x * x);
}

inline std::vector<double> GeluFloat64(const std::vector<double>& x,
                                       GeluApproximation a = GeluApproximation::kNone) {
  std::vector<double> y;
  for (double v : x) y.push_back(GeluOfFloat64(a, v));
  return y;
}

inline std::vector<double> GeluBackwardFloat64(const std::vector<double>& dy,
                                               const std::vector<double>& x,
                                               GeluApproximation a = GeluApproximation::kNone) {
  std::vector<double> dx;
  for (size_t i = 0; i < x.size(); ++i) dx.push_back(dy[i] * GeluDerivativeFloat64(a, x[i]));
  return dx;
}

// The largest difference of `got` from `want`, relative to want's largest magnitude or to 1 when
// every value is smaller: a lone x near -6 has a GELU near -1e-6 whose f32 erfc argument alone
// is off by up to x^2 ulp (2e-6 of it).
inline double GeluError(const std::vector<double>& got, const std::vector<double>& want) {
  double err = 0, scale = 1;
  for (size_t i = 0; i < want.size(); ++i) {
    err = std::max(err, std::abs(got[i] - want[i]));
    scale = std::max(scale, std::abs(want[i]));
  }
  return err / scale;
}

}  // namespace mimo::kernels::testing
