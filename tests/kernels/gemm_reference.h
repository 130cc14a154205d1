// Row-major matrix products and the linear layer in float64: the reference both the CPU twins and
// the CUDA code are measured against.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

namespace mimo::kernels::testing {

// op(a) (m, k) . op(b) (k, n) + bias (n,) broadcast over rows: a is (m, k), or (k, m) when
// transpose_a; b is (k, n), or (n, k) when transpose_b.
inline std::vector<double> GemmFloat64(const std::vector<double>& a, bool transpose_a,
                                       const std::vector<double>& b, bool transpose_b, int64_t m,
                                       int64_t n, int64_t k, const std::vector<double>& bias = {}) {
  std::vector<double> d(m * n);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double sum = bias.empty() ? 0.0 : bias[j];
      for (int64_t l = 0; l < k; ++l) {
        sum += a[transpose_a ? l * m + i : i * k + l] * b[transpose_b ? j * k + l : l * n + j];
      }
      d[i * n + j] = sum;
    }
  }
  return d;
}

inline double GeluTanhFloat64(double z) {
  return 0.5 * z * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (z + 0.044715 * z * z * z)));
}

inline double GeluTanhDerivativeFloat64(double z) {
  const double c = std::sqrt(2.0 / M_PI);
  const double t = std::tanh(c * (z + 0.044715 * z * z * z));
  return 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * c * (1.0 + 3.0 * 0.044715 * z * z);
}

struct LinearReference {
  std::vector<double> pre_activation, y;  // (tokens, out)
  std::vector<double> dz;                 // (tokens, out)
  std::vector<double> dx;                 // (tokens, in)
  std::vector<double> dw;                 // (out, in), without any accumulated part.
  std::vector<double> dbias;              // (out,)
};

// y = act(x w^T + bias) and its gradients for dy.
inline LinearReference LinearFloat64(const std::vector<double>& x, const std::vector<double>& w,
                                     const std::vector<double>& bias, const std::vector<double>& dy,
                                     bool gelu, int64_t tokens, int64_t in, int64_t out) {
  LinearReference r;
  r.pre_activation = GemmFloat64(x, false, w, true, tokens, out, in, bias);
  r.y = r.pre_activation;
  r.dz = dy;
  if (gelu) {
    for (size_t i = 0; i < r.y.size(); ++i) {
      r.y[i] = GeluTanhFloat64(r.pre_activation[i]);
      r.dz[i] = dy[i] * GeluTanhDerivativeFloat64(r.pre_activation[i]);
    }
  }
  r.dx = GemmFloat64(r.dz, false, w, false, tokens, in, out);
  r.dw = GemmFloat64(r.dz, true, x, false, out, in, tokens);
  r.dbias.assign(out, 0.0);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t o = 0; o < out; ++o) r.dbias[o] += r.dz[t * out + o];
  }
  return r;
}

}  // namespace mimo::kernels::testing
