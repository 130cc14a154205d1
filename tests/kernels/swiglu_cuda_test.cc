// SwiGLU's CUDA kernels against float64 on fresh random inputs and odd shapes (f32 relative error
// < 2e-6, bf16 < 1e-2), poisoned outputs fully written, and argument errors. Skips without a GPU.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "kernels/swiglu.h"
#include "tests/kernels/cuda_test_util.h"
#include "tests/kernels/op_test_util.h"
#include "tests/kernels/swiglu_reference.h"

namespace mimo::kernels {
namespace {

using ::testing::HasSubstr;
using namespace ::mimo::kernels::testing;  // NOLINT: test helpers.

class SwigluCudaTest : public CudaOpTest {};

TEST_P(SwigluCudaTest, MatchesFloat64) {
  const DType dtype = GetParam();
  const double bound = dtype == DType::kF32 ? 2e-6 : 1e-2;
  std::mt19937 random(std::random_device{}());
  for (const auto& [rows, cols] :
       {std::pair<int64_t, int64_t>{1, 1}, {3, 7}, {17, 255}, {64, 1000}, {4096, 2816}}) {
    SCOPED_TRACE(::testing::Message() << DTypeName(dtype) << " (" << rows << ", " << cols << ")");
    const HostData x = RandomData(dtype, rows * 2 * cols, random, -6, 6);
    const HostData dy = RandomData(dtype, rows * cols, random, -1, 1);
    const DeviceBuffer dx_in(x.bytes), ddy(dy.bytes);
    const DeviceBuffer y(rows * cols * DTypeSize(dtype)), dx(rows * 2 * cols * DTypeSize(dtype));
    ASSERT_TRUE(
        LaunchSwiglu({.dtype = dtype, .x = dx_in.get(), .y = y.get(), .rows = rows, .cols = cols},
                     nullptr)
            .ok());
    ASSERT_TRUE(LaunchSwigluBackward({.dtype = dtype,
                                      .dy = ddy.get(),
                                      .x = dx_in.get(),
                                      .dx = dx.get(),
                                      .rows = rows,
                                      .cols = cols},
                                     nullptr)
                    .ok());
    const SwigluReference ref = SwigluFloat64(x.exact, dy.exact, rows, cols);
    const std::vector<double> got_y = ValuesOf(dtype, y.Bytes()),
                              got_dx = ValuesOf(dtype, dx.Bytes());
    ASSERT_TRUE(AllFinite(got_y) && AllFinite(got_dx)) << "an output element was not written";
    EXPECT_LT(RelativeError(got_y, ref.y), bound);
    EXPECT_LT(RelativeError(got_dx, ref.dx), bound);
  }
}

INSTANTIATE_TEST_SUITE_P(DTypes, SwigluCudaTest, ::testing::Values(DType::kF32, DType::kBF16),
                         [](const auto& info) { return std::string(DTypeName(info.param)); });

TEST_F(SwigluCudaTest, BadArgumentsFailBeforeLaunching) {
  EXPECT_THAT(LaunchSwiglu({.dtype = DType::kI32, .rows = 1, .cols = 1}, nullptr).message(),
              HasSubstr("dtype i32 is not supported"));
  EXPECT_THAT(LaunchSwigluBackward({.rows = 2, .cols = 3}, nullptr).message(),
              HasSubstr("dy is null"));
  EXPECT_TRUE(LaunchSwiglu({.rows = 0, .cols = 3}, nullptr).ok());
}

}  // namespace
}  // namespace mimo::kernels
