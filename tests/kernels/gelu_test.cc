// GELU's CPU twin (exact and tanh-approximated) against float64 (f32 error < 2e-6, bf16 < 1e-2,
// relative to the largest value or 1: GeluError) on odd sizes, in place, its backward against
// central differences, and argument errors.
#include "kernels/gelu.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "tests/kernels/gelu_reference.h"
#include "tests/kernels/op_test_util.h"

namespace mimo::kernels {
namespace {

using ::testing::HasSubstr;
using namespace ::mimo::kernels::testing;  // NOLINT: test helpers.

class GeluCpuTest : public ::testing::TestWithParam<DType> {};

TEST_P(GeluCpuTest, MatchesFloat64ForwardAndBackward) {
  const DType dtype = GetParam();
  const double bound = dtype == DType::kF32 ? 2e-6 : 1e-2;
  std::mt19937 random(std::random_device{}());
  for (const auto& [n, a] : {std::pair{int64_t{1}, GeluApproximation::kNone},
                             {int64_t{7}, GeluApproximation::kTanh},
                             {int64_t{1001}, GeluApproximation::kNone},
                             {int64_t{1001}, GeluApproximation::kTanh},
                             {int64_t{65537}, GeluApproximation::kNone},
                             {int64_t{65537}, GeluApproximation::kTanh}}) {
    SCOPED_TRACE(::testing::Message() << DTypeName(dtype) << " n " << n
                                      << (a == GeluApproximation::kTanh ? " tanh" : ""));
    HostData x = RandomData(dtype, n, random, -6, 6);
    const HostData dy = RandomData(dtype, n, random, -1, 1);
    HostData y = PoisonedData(dtype, n), dx = PoisonedData(dtype, n);
    ASSERT_TRUE(
        GeluCpu({.dtype = dtype, .x = x.data(), .y = y.data(), .n = n, .approximation = a}).ok());
    ASSERT_TRUE(GeluBackwardCpu({.dtype = dtype,
                                 .dy = dy.data(),
                                 .x = x.data(),
                                 .dx = dx.data(),
                                 .n = n,
                                 .approximation = a})
                    .ok());
    const std::vector<double> got_y = ValuesOf(dtype, y.bytes), got_dx = ValuesOf(dtype, dx.bytes);
    ASSERT_TRUE(AllFinite(got_y) && AllFinite(got_dx));
    EXPECT_LT(GeluError(got_y, GeluFloat64(x.exact, a)), bound);
    EXPECT_LT(GeluError(got_dx, GeluBackwardFloat64(dy.exact, x.exact, a)), bound);
    ASSERT_TRUE(
        GeluCpu({.dtype = dtype, .x = x.data(), .y = x.data(), .n = n, .approximation = a}).ok());
    EXPECT_EQ(x.bytes, y.bytes);  // In place.
  }
}

INSTANTIATE_TEST_SUITE_P(DTypes, GeluCpuTest, ::testing::Values(DType::kF32, DType::kBF16),
                         [](const auto& info) { return std::string(DTypeName(info.param)); });

TEST(GeluCpuGradientTest, BackwardMatchesCentralDifferences) {
  std::vector<float> x = {-5.0f, -2.5f, -1.0f, -0.3f, 0.0f, 0.4f, 1.7f, 3.0f};
  for (GeluApproximation a : {GeluApproximation::kNone, GeluApproximation::kTanh}) {
    std::vector<float> ones(x.size(), 1.0f), dx(x.size()), y(x.size());
    ASSERT_TRUE(GeluBackwardCpu({.dy = ones.data(),
                                 .x = x.data(),
                                 .dx = dx.data(),
                                 .n = static_cast<int64_t>(x.size()),
                                 .approximation = a})
                    .ok());
    constexpr float h = 1e-2f;
    for (size_t i = 0; i < x.size(); ++i) {
      float plus = x[i] + h, minus = x[i] - h, yp, ym;
      ASSERT_TRUE(GeluCpu({.x = &plus, .y = &yp, .n = 1, .approximation = a}).ok());
      ASSERT_TRUE(GeluCpu({.x = &minus, .y = &ym, .n = 1, .approximation = a}).ok());
      const double numeric = (static_cast<double>(yp) - ym) / (2 * h);
      EXPECT_NEAR(dx[i], numeric, 1e-3) << "x = " << x[i];
    }
  }
}

TEST(GeluCpuTest, BadArgumentsAreNamed) {
  EXPECT_THAT(GeluCpu({.dtype = DType::kI32, .n = 1}).message(), HasSubstr("dtype i32"));
  EXPECT_THAT(GeluCpu({.n = -1}).message(), HasSubstr("bad shape"));
  EXPECT_THAT(GeluBackwardCpu({.n = 3}).message(), HasSubstr("dy is null"));
  EXPECT_TRUE(GeluCpu({.n = 0}).ok());
}

}  // namespace
}  // namespace mimo::kernels
