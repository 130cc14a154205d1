// RoPE in float64: the reference both the CPU twin and the CUDA kernel are measured against.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

namespace mimo::kernels::testing {

// x: (tokens, heads, head_dim); rotates by +theta, or by -theta with `backward`.
inline std::vector<double> RopeFloat64(const std::vector<double>& x,
                                       const std::vector<int32_t>& positions, int64_t heads,
                                       int64_t head_dim, int64_t rotary_dim, double base,
                                       bool backward) {
  std::vector<double> y = x;
  const int64_t half = rotary_dim / 2;
  for (size_t t = 0; t < positions.size(); ++t) {
    for (int64_t i = 0; i < half; ++i) {
      const double theta = positions[t] * std::pow(base, -2.0 * i / rotary_dim);
      const double c = std::cos(theta), s = backward ? -std::sin(theta) : std::sin(theta);
      for (int64_t h = 0; h < heads; ++h) {
        const int64_t k = (t * heads + h) * head_dim;
        y[k + i] = x[k + i] * c - x[k + i + half] * s;
        y[k + i + half] = x[k + i + half] * c + x[k + i] * s;
      }
    }
  }
  return y;
}

// Positions of packed sequences of the given lengths (THD): each restarts at 0.
inline std::vector<int32_t> PackedPositions(const std::vector<int32_t>& lengths) {
  std::vector<int32_t> out;
  for (int32_t n : lengths) {
    for (int32_t p = 0; p < n; ++p) out.push_back(p);
  }
  return out;
}

}  // namespace mimo::kernels::testing
