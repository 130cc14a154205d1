// SwiGLU's CPU twin: forward and backward against float64 on fresh random inputs and odd shapes
// (f32 relative error < 2e-6, bf16 < 1e-2), poisoned outputs fully written, the backward against
// central differences of the forward, and argument errors.
#include "kernels/swiglu.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "tests/kernels/op_test_util.h"
#include "tests/kernels/swiglu_reference.h"

namespace mimo::kernels {
namespace {

using ::testing::HasSubstr;
using namespace ::mimo::kernels::testing;  // NOLINT: test helpers.

class SwigluCpuTest : public ::testing::TestWithParam<DType> {};

TEST_P(SwigluCpuTest, MatchesFloat64ForwardAndBackward) {
  const DType dtype = GetParam();
  const double bound = dtype == DType::kF32 ? 2e-6 : 1e-2;
  std::mt19937 random(std::random_device{}());
  for (const auto& [rows, cols] :
       {std::pair<int64_t, int64_t>{1, 1}, {3, 7}, {17, 255}, {64, 1000}}) {
    SCOPED_TRACE(::testing::Message() << DTypeName(dtype) << " (" << rows << ", " << cols << ")");
    const HostData x = RandomData(dtype, rows * 2 * cols, random, -6, 6);
    const HostData dy = RandomData(dtype, rows * cols, random, -1, 1);
    HostData y = PoisonedData(dtype, rows * cols), dx = PoisonedData(dtype, rows * 2 * cols);
    ASSERT_TRUE(
        SwigluCpu({.dtype = dtype, .x = x.data(), .y = y.data(), .rows = rows, .cols = cols}).ok());
    ASSERT_TRUE(SwigluBackwardCpu({.dtype = dtype,
                                   .dy = dy.data(),
                                   .x = x.data(),
                                   .dx = dx.data(),
                                   .rows = rows,
                                   .cols = cols})
                    .ok());
    const SwigluReference ref = SwigluFloat64(x.exact, dy.exact, rows, cols);
    const std::vector<double> got_y = ValuesOf(dtype, y.bytes), got_dx = ValuesOf(dtype, dx.bytes);
    ASSERT_TRUE(AllFinite(got_y) && AllFinite(got_dx)) << "an output element was not written";
    EXPECT_LT(RelativeError(got_y, ref.y), bound);
    EXPECT_LT(RelativeError(got_dx, ref.dx), bound);
  }
}

INSTANTIATE_TEST_SUITE_P(DTypes, SwigluCpuTest, ::testing::Values(DType::kF32, DType::kBF16),
                         [](const auto& info) { return std::string(DTypeName(info.param)); });

// L(x) = sum(y * u): the backward with dy = u must equal central differences of L.
TEST(SwigluCpuGradientTest, BackwardMatchesCentralDifferences) {
  std::mt19937 random(9);
  const int64_t rows = 2, cols = 5;
  const HostData x = RandomData(DType::kF32, rows * 2 * cols, random, -4, 4);
  const HostData u = RandomData(DType::kF32, rows * cols, random, -1, 1);
  auto loss = [&](std::vector<char> xb) {
    std::vector<float> y(rows * cols);
    EXPECT_TRUE(SwigluCpu({.x = xb.data(), .y = y.data(), .rows = rows, .cols = cols}).ok());
    double l = 0;
    for (int64_t i = 0; i < rows * cols; ++i) l += static_cast<double>(y[i]) * u.exact[i];
    return l;
  };
  std::vector<float> dx(rows * 2 * cols);
  ASSERT_TRUE(SwigluBackwardCpu(
                  {.dy = u.data(), .x = x.data(), .dx = dx.data(), .rows = rows, .cols = cols})
                  .ok());
  constexpr float h = 1e-2f;
  for (int64_t i = 0; i < rows * 2 * cols; ++i) {
    std::vector<char> plus = x.bytes, minus = x.bytes;
    reinterpret_cast<float*>(plus.data())[i] += h;
    reinterpret_cast<float*>(minus.data())[i] -= h;
    const double numeric = (loss(plus) - loss(minus)) / (2 * h);
    EXPECT_NEAR(dx[i], numeric, 2e-3 + 2e-3 * std::abs(numeric)) << "x[" << i << "]";
  }
}

TEST(SwigluCpuTest, BadArgumentsAreNamed) {
  float buf[4] = {};
  EXPECT_THAT(SwigluCpu({.dtype = DType::kI64, .x = buf, .y = buf, .rows = 1, .cols = 1}).message(),
              HasSubstr("Swiglu: dtype i64 is not supported"));
  EXPECT_THAT(SwigluCpu({.x = buf, .rows = 1, .cols = 2}).message(), HasSubstr("y is null"));
  EXPECT_THAT(SwigluBackwardCpu({.rows = -1, .cols = 2}).message(), HasSubstr("bad shape (-1, 2)"));
  EXPECT_TRUE(SwigluCpu({.rows = 0, .cols = 2}).ok());
}

}  // namespace
}  // namespace mimo::kernels
