// RMSNorm's CPU twin: forward and backward against float64 on fresh random inputs and odd shapes
// (f32 relative error < 2e-6, bf16 < 1e-2; dx relative to the size of its cancelling terms),
// poisoned outputs fully written, the backward against central differences of the forward, and
// argument errors.
#include "kernels/rmsnorm.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "common/bfloat16.h"
#include "tests/kernels/rmsnorm_reference.h"

namespace mimo::kernels {
namespace {

using ::testing::HasSubstr;
using testing::RelativeError;
using testing::RmsNormDxScale;
using testing::RmsNormFloat64;

struct Shape2 {
  int64_t rows, cols;
};
constexpr Shape2 kShapes[] = {{1, 1}, {3, 7}, {17, 255}, {64, 1000}, {5, 4099}};

// Values of `dtype` (f32 as is, bf16 rounded), stored as bytes, and their float64 values.
struct Buffer {
  std::vector<float> f32;
  std::vector<uint16_t> bf16;
  std::vector<double> exact;
  void* data(DType dtype) {
    return dtype == DType::kF32 ? static_cast<void*>(f32.data()) : bf16.data();
  }
};

Buffer Random(DType dtype, int64_t n, std::mt19937& random, float lo, float hi) {
  std::uniform_real_distribution<float> dist(lo, hi);
  Buffer b;
  for (int64_t i = 0; i < n; ++i) {
    float v = dist(random);
    if (dtype == DType::kBF16) {
      b.bf16.push_back(FloatToBFloat16(v));
      v = BFloat16ToFloat(b.bf16.back());
    }
    b.f32.push_back(v);
    b.exact.push_back(v);
  }
  return b;
}

// An output of n elements (f32 and bf16), poisoned with NaN.
Buffer Poisoned(int64_t n) {
  Buffer b;
  b.f32.assign(n, std::numeric_limits<float>::quiet_NaN());
  b.bf16.assign(n, 0x7fc0);
  return b;
}

std::vector<double> Values(DType dtype, const Buffer& b) {
  std::vector<double> out;
  if (dtype == DType::kF32) {
    for (float v : b.f32) out.push_back(v);
  } else {
    for (uint16_t v : b.bf16) out.push_back(BFloat16ToFloat(v));
  }
  return out;
}

bool AllFinite(const std::vector<double>& v) {
  for (double x : v) {
    if (!std::isfinite(x)) return false;
  }
  return true;
}

class RmsNormCpuTest : public ::testing::TestWithParam<DType> {};

TEST_P(RmsNormCpuTest, MatchesFloat64ForwardAndBackward) {
  const DType dtype = GetParam();
  const double bound = dtype == DType::kF32 ? 2e-6 : 1e-2;
  std::mt19937 random(std::random_device{}());
  for (const Shape2& s : kShapes) {
    SCOPED_TRACE(::testing::Message()
                 << DTypeName(dtype) << " (" << s.rows << ", " << s.cols << ")");
    const int64_t n = s.rows * s.cols;
    Buffer x = Random(dtype, n, random, -3, 3);
    Buffer w = Random(dtype, s.cols, random, 0.5, 1.5);
    Buffer dy = Random(dtype, n, random, -1, 1);
    Buffer y = Poisoned(n);
    Buffer dx = Poisoned(n);
    std::vector<float> rstd(s.rows, std::nanf("")), dweight(s.cols, std::nanf(""));
    ASSERT_TRUE(RmsNormCpu({.dtype = dtype,
                            .x = x.data(dtype),
                            .weight = w.data(dtype),
                            .y = y.data(dtype),
                            .rstd = rstd.data(),
                            .rows = s.rows,
                            .cols = s.cols,
                            .eps = 1e-6f})
                    .ok());
    ASSERT_TRUE(RmsNormBackwardCpu({.dtype = dtype,
                                    .dy = dy.data(dtype),
                                    .x = x.data(dtype),
                                    .weight = w.data(dtype),
                                    .rstd = rstd.data(),
                                    .dx = dx.data(dtype),
                                    .dweight = dweight.data(),
                                    .rows = s.rows,
                                    .cols = s.cols})
                    .ok());
    const auto ref = RmsNormFloat64(x.exact, w.exact, dy.exact, s.rows, s.cols, 1e-6);
    const std::vector<double> got_y = Values(dtype, y), got_dx = Values(dtype, dx);
    const std::vector<double> got_rstd(rstd.begin(), rstd.end());
    const std::vector<double> got_dw(dweight.begin(), dweight.end());
    ASSERT_TRUE(AllFinite(got_y) && AllFinite(got_dx) && AllFinite(got_rstd) && AllFinite(got_dw));
    EXPECT_LT(RelativeError(got_y, ref.y), bound);
    EXPECT_LT(RelativeError(got_rstd, ref.rstd), 2e-6);
    EXPECT_LT(RelativeError(got_dx, ref.dx, RmsNormDxScale(dy.exact, w.exact, ref.rstd, s.cols)),
              bound);
    EXPECT_LT(RelativeError(got_dw, ref.dweight), 2e-6);
  }
}

INSTANTIATE_TEST_SUITE_P(DTypes, RmsNormCpuTest, ::testing::Values(DType::kF32, DType::kBF16),
                         [](const auto& info) { return std::string(DTypeName(info.param)); });

// L(x, w) = sum(y * u): the backward with dy = u must equal central differences of L.
TEST(RmsNormCpuGradientTest, BackwardMatchesCentralDifferences) {
  std::mt19937 random(5);
  const int64_t rows = 3, cols = 9;
  Buffer x = Random(DType::kF32, rows * cols, random, -2, 2);
  Buffer w = Random(DType::kF32, cols, random, 0.5, 1.5);
  Buffer u = Random(DType::kF32, rows * cols, random, -1, 1);
  auto loss = [&](const std::vector<float>& xv, const std::vector<float>& wv) {
    std::vector<float> y(rows * cols), rstd(rows);
    EXPECT_TRUE(RmsNormCpu({.x = xv.data(),
                            .weight = wv.data(),
                            .y = y.data(),
                            .rstd = rstd.data(),
                            .rows = rows,
                            .cols = cols,
                            .eps = 1e-5f})
                    .ok());
    double l = 0;
    for (int64_t i = 0; i < rows * cols; ++i) l += static_cast<double>(y[i]) * u.f32[i];
    return l;
  };
  std::vector<float> y(rows * cols), rstd(rows), dx(rows * cols), dw(cols);
  ASSERT_TRUE(RmsNormCpu({.x = x.f32.data(),
                          .weight = w.f32.data(),
                          .y = y.data(),
                          .rstd = rstd.data(),
                          .rows = rows,
                          .cols = cols,
                          .eps = 1e-5f})
                  .ok());
  ASSERT_TRUE(RmsNormBackwardCpu({.dy = u.f32.data(),
                                  .x = x.f32.data(),
                                  .weight = w.f32.data(),
                                  .rstd = rstd.data(),
                                  .dx = dx.data(),
                                  .dweight = dw.data(),
                                  .rows = rows,
                                  .cols = cols})
                  .ok());
  constexpr float h = 1e-2f;
  for (int64_t i = 0; i < rows * cols; ++i) {
    std::vector<float> plus = x.f32, minus = x.f32;
    plus[i] += h;
    minus[i] -= h;
    const double numeric = (loss(plus, w.f32) - loss(minus, w.f32)) / (2 * h);
    EXPECT_NEAR(dx[i], numeric, 2e-3 + 2e-3 * std::abs(numeric)) << "x[" << i << "]";
  }
  for (int64_t c = 0; c < cols; ++c) {
    std::vector<float> plus = w.f32, minus = w.f32;
    plus[c] += h;
    minus[c] -= h;
    const double numeric = (loss(x.f32, plus) - loss(x.f32, minus)) / (2 * h);
    EXPECT_NEAR(dw[c], numeric, 2e-3 + 2e-3 * std::abs(numeric)) << "w[" << c << "]";
  }
}

TEST(RmsNormCpuTest, BadArgumentsAreNamed) {
  float buf[4] = {};
  const RmsNormParams good{.x = buf, .weight = buf, .y = buf, .rstd = buf, .rows = 1, .cols = 4};
  EXPECT_TRUE(CheckRmsNorm(good).ok());
  RmsNormParams p = good;
  p.dtype = DType::kI32;
  EXPECT_THAT(RmsNormCpu(p).message(), HasSubstr("dtype i32 is not supported"));
  p = good;
  p.cols = 0;
  EXPECT_THAT(RmsNormCpu(p).message(), HasSubstr("bad shape (1, 0)"));
  p = good;
  p.eps = 0;
  EXPECT_THAT(RmsNormCpu(p).message(), HasSubstr("eps must be positive"));
  p = good;
  p.weight = nullptr;
  EXPECT_THAT(RmsNormCpu(p).message(), HasSubstr("weight is null"));
  // No rows: nothing is read or written.
  EXPECT_TRUE(RmsNormCpu({.rows = 0, .cols = 4}).ok());
  RmsNormBackwardParams b{.dy = buf,
                          .x = buf,
                          .weight = buf,
                          .rstd = buf,
                          .dx = buf,
                          .dweight = nullptr,
                          .rows = 1,
                          .cols = 4};
  EXPECT_THAT(RmsNormBackwardCpu(b).message(), HasSubstr("dweight is null"));
  float dw[4] = {1, 1, 1, 1};
  EXPECT_TRUE(RmsNormBackwardCpu({.dweight = dw, .rows = 0, .cols = 4}).ok());
  EXPECT_EQ(dw[3], 0.0f);  // Overwritten with the sum over no rows.
}

}  // namespace
}  // namespace mimo::kernels
