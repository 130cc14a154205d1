// SwiGLU's CUDA kernels against float64 on fresh random inputs and odd shapes (f32 relative error
// < 2e-6, bf16 < 1e-2; odd cols take the scalar path, others 16-byte vectors), misaligned buffers
// (scalar path, same bits as the vector path), poisoned outputs fully written, and argument
// errors. Skips without a GPU.
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

// Buffers one element off 16-byte alignment (cols a multiple of 8) take the scalar fallback and
// give the same bits as the aligned vector path.
TEST_P(SwigluCudaTest, MisalignedBuffersMatchTheVectorPath) {
  const DType dtype = GetParam();
  const int64_t rows = 33, cols = 512, e = static_cast<int64_t>(DTypeSize(dtype));
  std::mt19937 random(std::random_device{}());
  const HostData x = RandomData(dtype, rows * 2 * cols, random, -6, 6);
  const HostData dy = RandomData(dtype, rows * cols, random, -1, 1);
  std::vector<char> x_off(e), dy_off(e);
  x_off.insert(x_off.end(), x.bytes.begin(), x.bytes.end());
  dy_off.insert(dy_off.end(), dy.bytes.begin(), dy.bytes.end());
  const DeviceBuffer dx_a(x.bytes), ddy_a(dy.bytes), dx_m(x_off), ddy_m(dy_off);
  const DeviceBuffer y_a(rows * cols * e), y_m((rows * cols + 1) * e);
  const DeviceBuffer g_a(rows * 2 * cols * e), g_m((rows * 2 * cols + 1) * e);
  for (bool aligned : {true, false}) {
    const int64_t off = aligned ? 0 : e;
    char* xp = static_cast<char*>(aligned ? dx_a.get() : dx_m.get()) + off;
    char* dyp = static_cast<char*>(aligned ? ddy_a.get() : ddy_m.get()) + off;
    char* yp = static_cast<char*>(aligned ? y_a.get() : y_m.get()) + off;
    char* gp = static_cast<char*>(aligned ? g_a.get() : g_m.get()) + off;
    ASSERT_TRUE(
        LaunchSwiglu({.dtype = dtype, .x = xp, .y = yp, .rows = rows, .cols = cols}, nullptr).ok());
    ASSERT_TRUE(
        LaunchSwigluBackward(
            {.dtype = dtype, .dy = dyp, .x = xp, .dx = gp, .rows = rows, .cols = cols}, nullptr)
            .ok());
  }
  const std::vector<char> y_m_bytes = y_m.Bytes(), g_m_bytes = g_m.Bytes();
  EXPECT_EQ(std::vector<char>(y_m_bytes.begin() + e, y_m_bytes.end()), y_a.Bytes());
  EXPECT_EQ(std::vector<char>(g_m_bytes.begin() + e, g_m_bytes.end()), g_a.Bytes());
}

INSTANTIATE_TEST_SUITE_P(DTypes, SwigluCudaTest, ::testing::Values(DType::kF32, DType::kBF16),
                         [](const auto& info) { return std::string(DTypeName(info.param)); });

TEST_F(SwigluCudaTest, BadArgumentsFailBeforeLaunching) {
  EXPECT_THAT(LaunchSwiglu({.dtype = DType::kI32, .rows = 1, .cols = 1}, nullptr).message(),
              HasSubstr("dtype i32 is not supported"));
  EXPECT_THAT(LaunchSwigluBackward({.rows = 2, .cols = 3}, nullptr).message(),
              HasSubstr("dy is null"));
  EXPECT_TRUE(LaunchSwiglu({.rows = 0, .cols = 3}, nullptr).ok());
  // Rows past 32-bit indexing are refused (the buffers are never touched).
  const DeviceBuffer any(16);
  const int64_t too_long = int64_t{1} << 31;
  EXPECT_THAT(LaunchSwiglu({.x = any.get(), .y = any.get(), .rows = 1, .cols = too_long}, nullptr)
                  .message(),
              HasSubstr("rows of 2147483648 elements"));
  EXPECT_THAT(
      LaunchSwigluBackward(
          {.dy = any.get(), .x = any.get(), .dx = any.get(), .rows = 1, .cols = too_long}, nullptr)
          .message(),
      HasSubstr("rows of 2147483648 elements"));
}

}  // namespace
}  // namespace mimo::kernels
