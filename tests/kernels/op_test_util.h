// Helpers for op tests: random bf16/f32 host data with its exact float64 values, reading outputs
// back as float64, NaN poisoning, the error measure the bounds are stated in, and a
// central-difference check of a backward.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "common/bfloat16.h"
#include "kernels/dtype.h"

namespace mimo::kernels::testing {

// Host data of one dtype: its bytes, and the float64 value of every element.
struct HostData {
  DType dtype = DType::kF32;
  std::vector<char> bytes;
  std::vector<double> exact;
  void* data() { return bytes.data(); }
  const void* data() const { return bytes.data(); }
};

// `n` values uniform in [lo, hi), rounded to `dtype`.
inline HostData RandomData(DType dtype, int64_t n, std::mt19937& random, float lo, float hi) {
  std::uniform_real_distribution<float> dist(lo, hi);
  HostData h{.dtype = dtype, .bytes = std::vector<char>(n * DTypeSize(dtype)), .exact = {}};
  for (int64_t i = 0; i < n; ++i) {
    float v = dist(random);
    if (dtype == DType::kBF16) {
      const uint16_t b = FloatToBFloat16(v);
      std::memcpy(h.bytes.data() + 2 * i, &b, 2);
      v = BFloat16ToFloat(b);
    } else {
      std::memcpy(h.bytes.data() + 4 * i, &v, 4);
    }
    h.exact.push_back(v);
  }
  return h;
}

// `n` elements of `dtype`, every byte 0xff: NaN in f32 and bf16, so unwritten elements show.
inline HostData PoisonedData(DType dtype, int64_t n) {
  return HostData{
      .dtype = dtype, .bytes = std::vector<char>(n * DTypeSize(dtype), '\xff'), .exact = {}};
}

// Elements of `dtype` (bf16 or f32) in `bytes` as float64.
inline std::vector<double> ValuesOf(DType dtype, const std::vector<char>& bytes) {
  std::vector<double> out;
  for (size_t i = 0; i < bytes.size() / DTypeSize(dtype); ++i) {
    if (dtype == DType::kF32) {
      float v;
      std::memcpy(&v, bytes.data() + 4 * i, 4);
      out.push_back(v);
    } else {
      uint16_t b;
      std::memcpy(&b, bytes.data() + 2 * i, 2);
      out.push_back(BFloat16ToFloat(b));
    }
  }
  return out;
}

// A copy of `bytes` bytes at `data`, e.g. ids or targets for a DeviceBuffer.
inline std::vector<char> BytesOf(const void* data, size_t bytes) {
  const char* p = static_cast<const char*>(data);
  return std::vector<char>(p, p + bytes);
}

inline bool AllFinite(const std::vector<double>& v) {
  return std::all_of(v.begin(), v.end(), [](double x) { return std::isfinite(x); });
}

// max |got - want| / scale, with scale = max |want| unless given (a quantity whose digits cancel,
// like RMSNorm's dx, is measured against the size of the terms that cancel).
inline double RelativeError(const std::vector<double>& got, const std::vector<double>& want,
                            double scale = 0) {
  double err = 0, max_want = 1e-30;
  for (size_t i = 0; i < want.size(); ++i) {
    err = std::max(err, std::abs(got[i] - want[i]));
    max_want = std::max(max_want, std::abs(want[i]));
  }
  return err / (scale > 0 ? scale : max_want);
}

// Checks an f32 op's backward by central differences: with L(x) = sum_j forward(x)_j * u_j, dx
// (the backward applied to u) must equal (L(x + h e_i) - L(x - h e_i)) / 2h for every i, within
// tol * (1 + |difference|). x and u are f32 data; forward maps x's values to the op's output.
template <typename Forward>
void ExpectCentralDifferences(const HostData& x, const HostData& u, const std::vector<float>& dx,
                              Forward forward, float h = 1e-2f, double tol = 2e-3) {
  auto loss = [&](const std::vector<float>& at) {
    const std::vector<float> y = forward(at);
    double l = 0;
    for (size_t j = 0; j < y.size(); ++j) l += static_cast<double>(y[j]) * u.exact[j];
    return l;
  };
  const std::vector<float> x0(x.exact.begin(), x.exact.end());
  for (size_t i = 0; i < x0.size(); ++i) {
    std::vector<float> plus = x0, minus = x0;
    plus[i] += h;
    minus[i] -= h;
    const double numeric = (loss(plus) - loss(minus)) / (2.0 * h);
    EXPECT_NEAR(dx[i], numeric, tol * (1 + std::abs(numeric))) << "x[" << i << "]";
  }
}

}  // namespace mimo::kernels::testing
