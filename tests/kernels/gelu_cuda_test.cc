// GELU's CUDA kernels (exact and tanh-approximated) against float64 (f32 error < 2e-6, bf16 <
// 1e-2, relative to the largest value or 1: GeluError) on odd sizes, poisoned outputs fully
// written, and argument errors. Skips without a GPU.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "kernels/gelu.h"
#include "tests/kernels/cuda_test_util.h"
#include "tests/kernels/gelu_reference.h"
#include "tests/kernels/op_test_util.h"

namespace mimo::kernels {
namespace {

using ::testing::HasSubstr;
using namespace ::mimo::kernels::testing;  // NOLINT: test helpers.

class GeluCudaTest : public CudaOpTest {};

TEST_P(GeluCudaTest, MatchesFloat64) {
  const DType dtype = GetParam();
  const double bound = dtype == DType::kF32 ? 2e-6 : 1e-2;
  std::mt19937 random(std::random_device{}());
  for (const auto& [n, a] : {std::pair{int64_t{1}, GeluApproximation::kNone},
                             {int64_t{7}, GeluApproximation::kTanh},
                             {int64_t{1001}, GeluApproximation::kNone},
                             {int64_t{1} << 24, GeluApproximation::kNone},
                             {int64_t{1} << 24, GeluApproximation::kTanh}}) {
    SCOPED_TRACE(::testing::Message() << DTypeName(dtype) << " n " << n
                                      << (a == GeluApproximation::kTanh ? " tanh" : ""));
    const HostData x = RandomData(dtype, n, random, -6, 6);
    const HostData dy = RandomData(dtype, n, random, -1, 1);
    const DeviceBuffer d_x(x.bytes), d_dy(dy.bytes), y(n * DTypeSize(dtype)),
        dx(n * DTypeSize(dtype));
    ASSERT_TRUE(
        LaunchGelu({.dtype = dtype, .x = d_x.get(), .y = y.get(), .n = n, .approximation = a},
                   nullptr)
            .ok());
    ASSERT_TRUE(LaunchGeluBackward({.dtype = dtype,
                                    .dy = d_dy.get(),
                                    .x = d_x.get(),
                                    .dx = dx.get(),
                                    .n = n,
                                    .approximation = a},
                                   nullptr)
                    .ok());
    const std::vector<double> got_y = ValuesOf(dtype, y.Bytes()),
                              got_dx = ValuesOf(dtype, dx.Bytes());
    ASSERT_TRUE(AllFinite(got_y) && AllFinite(got_dx)) << "an output element was not written";
    EXPECT_LT(GeluError(got_y, GeluFloat64(x.exact, a)), bound);
    EXPECT_LT(GeluError(got_dx, GeluBackwardFloat64(dy.exact, x.exact, a)), bound);
  }
}

INSTANTIATE_TEST_SUITE_P(DTypes, GeluCudaTest, ::testing::Values(DType::kF32, DType::kBF16),
                         [](const auto& info) { return std::string(DTypeName(info.param)); });

TEST_F(GeluCudaTest, BadArgumentsFailBeforeLaunching) {
  EXPECT_THAT(LaunchGelu({.n = 4}, nullptr).message(), HasSubstr("x is null"));
  EXPECT_TRUE(LaunchGeluBackward({.n = 0}, nullptr).ok());
}

}  // namespace
}  // namespace mimo::kernels
