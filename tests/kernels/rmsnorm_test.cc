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
using namespace ::mimo::kernels::testing;  // NOLINT: test helpers.

struct Shape2 {
  int64_t rows, cols;
};
constexpr Shape2 kShapes[] = {{1, 1}, {3, 7}, {17, 255}, {64, 1000}, {5, 4099}};

class RmsNormCpuTest : public ::testing::TestWithParam<DType> {};

TEST_P(RmsNormCpuTest, MatchesFloat64ForwardAndBackward) {
  const DType dtype = GetParam();
  const double bound = dtype == DType::kF32 ? 2e-6 : 1e-2;
  std::mt19937 random(std::random_device{}());
  for (const Shape2& s : kShapes) {
    SCOPED_TRACE(::testing::Message()
                 << DTypeName(dtype) << " (" << s.rows << ", " << s.cols << ")");
    const int64_t n = s.rows * s.cols;
    HostData x = RandomData(dtype, n, random, -3, 3);
    HostData w = RandomData(dtype, s.cols, random, 0.5, 1.5);
    HostData dy = RandomData(dtype, n, random, -1, 1);
    HostData y = PoisonedData(dtype, n);
    HostData dx = PoisonedData(dtype, n);
    std::vector<float> rstd(s.rows, std::nanf("")), dweight(s.cols, std::nanf(""));
    ASSERT_TRUE(RmsNormCpu({.dtype = dtype,
                            .x = x.data(),
                            .weight = w.data(),
                            .y = y.data(),
                            .rstd = rstd.data(),
                            .rows = s.rows,
                            .cols = s.cols,
                            .eps = 1e-6f})
                    .ok());
    ASSERT_TRUE(RmsNormBackwardCpu({.dtype = dtype,
                                    .dy = dy.data(),
                                    .x = x.data(),
                                    .weight = w.data(),
                                    .rstd = rstd.data(),
                                    .dx = dx.data(),
                                    .dweight = dweight.data(),
                                    .rows = s.rows,
                                    .cols = s.cols})
                    .ok());
    const auto ref = RmsNormFloat64(x.exact, w.exact, dy.exact, s.rows, s.cols, 1e-6);
    const std::vector<double> got_y = ValuesOf(dtype, y.bytes), got_dx = ValuesOf(dtype, dx.bytes);
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
  const HostData xd = RandomData(DType::kF32, rows * cols, random, -2, 2);
  const HostData wd = RandomData(DType::kF32, cols, random, 0.5, 1.5);
  const HostData ud = RandomData(DType::kF32, rows * cols, random, -1, 1);
  const std::vector<float> x(xd.exact.begin(), xd.exact.end()), w(wd.exact.begin(), wd.exact.end()),
      u(ud.exact.begin(), ud.exact.end());
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
    for (int64_t i = 0; i < rows * cols; ++i) l += static_cast<double>(y[i]) * u[i];
    return l;
  };
  std::vector<float> y(rows * cols), rstd(rows), dx(rows * cols), dw(cols);
  ASSERT_TRUE(RmsNormCpu({.x = x.data(),
                          .weight = w.data(),
                          .y = y.data(),
                          .rstd = rstd.data(),
                          .rows = rows,
                          .cols = cols,
                          .eps = 1e-5f})
                  .ok());
  ASSERT_TRUE(RmsNormBackwardCpu({.dy = u.data(),
                                  .x = x.data(),
                                  .weight = w.data(),
                                  .rstd = rstd.data(),
                                  .dx = dx.data(),
                                  .dweight = dw.data(),
                                  .rows = rows,
                                  .cols = cols})
                  .ok());
  constexpr float h = 1e-2f;
  for (int64_t i = 0; i < rows * cols; ++i) {
    std::vector<float> plus = x, minus = x;
    plus[i] += h;
    minus[i] -= h;
    const double numeric = (loss(plus, w) - loss(minus, w)) / (2 * h);
    EXPECT_NEAR(dx[i], numeric, 2e-3 + 2e-3 * std::abs(numeric)) << "x[" << i << "]";
  }
  for (int64_t c = 0; c < cols; ++c) {
    std::vector<float> plus = w, minus = w;
    plus[c] += h;
    minus[c] -= h;
    const double numeric = (loss(x, plus) - loss(x, minus)) / (2 * h);
    EXPECT_NEAR(dw[c], numeric, 2e-3 + 2e-3 * std::abs(numeric)) << "w[" << c << "]";
  }
}

// Without dweight (frozen norm weights) dx is the same.
TEST(RmsNormCpuTest, DweightIsOptional) {
  std::vector<float> x = {1, -2, 3, 0.5f, 2, -1}, w = {1, 0.5f, 2}, dy = {0.3f, -1, 2, 1, 1, -0.5f};
  std::vector<float> y(6), rstd(2), dx1(6), dx2(6), dw(3);
  ASSERT_TRUE(RmsNormCpu({.x = x.data(),
                          .weight = w.data(),
                          .y = y.data(),
                          .rstd = rstd.data(),
                          .rows = 2,
                          .cols = 3})
                  .ok());
  RmsNormBackwardParams b{.dy = dy.data(),
                          .x = x.data(),
                          .weight = w.data(),
                          .rstd = rstd.data(),
                          .dx = dx1.data(),
                          .dweight = dw.data(),
                          .rows = 2,
                          .cols = 3};
  ASSERT_TRUE(RmsNormBackwardCpu(b).ok());
  b.dx = dx2.data();
  b.dweight = nullptr;
  ASSERT_TRUE(RmsNormBackwardCpu(b).ok());
  EXPECT_EQ(dx1, dx2);
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
                          .dx = nullptr,
                          .dweight = buf,
                          .rows = 1,
                          .cols = 4};
  EXPECT_THAT(RmsNormBackwardCpu(b).message(), HasSubstr("dx is null"));
  float dw[4] = {1, 1, 1, 1};
  EXPECT_TRUE(RmsNormBackwardCpu({.dweight = dw, .rows = 0, .cols = 4}).ok());
  EXPECT_EQ(dw[3], 0.0f);  // Overwritten with the sum over no rows.
}

}  // namespace
}  // namespace mimo::kernels
