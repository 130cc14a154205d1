// AdamW and the sum of squares in float64: the references both devices are measured against.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

namespace mimo::kernels::testing {

struct AdamWState {
  std::vector<double> master, m, v;
};

// One update of every element with grads `grad` (already as values).
inline void AdamWFloat64(AdamWState& s, const std::vector<double>& grad, double lr, double beta1,
                         double beta2, double eps, double weight_decay, double grad_scale,
                         int64_t step) {
  const double c1 = 1 - std::pow(beta1, step), c2 = 1 - std::pow(beta2, step);
  for (size_t i = 0; i < grad.size(); ++i) {
    const double g = grad[i] * grad_scale;
    s.m[i] = beta1 * s.m[i] + (1 - beta1) * g;
    s.v[i] = beta2 * s.v[i] + (1 - beta2) * g * g;
    s.master[i] -=
        lr * ((s.m[i] / c1) / (std::sqrt(s.v[i] / c2) + eps) + weight_decay * s.master[i]);
  }
}

}  // namespace mimo::kernels::testing
