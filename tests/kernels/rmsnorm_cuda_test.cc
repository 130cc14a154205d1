// RMSNorm's CUDA kernels against float64 on fresh random inputs and odd shapes (f32 relative
// error < 5e-6: fp32 tree sums; bf16 < 1e-2; dx relative to its cancelling terms), poisoned
// outputs fully written, bitwise-deterministic reruns, and argument errors. Skips without a GPU.
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "common/bfloat16.h"
#include "kernels/rmsnorm.h"
#include "tests/kernels/cuda_test_util.h"
#include "tests/kernels/rmsnorm_reference.h"

namespace mimo::kernels {
namespace {

using ::testing::HasSubstr;
using namespace ::mimo::kernels::testing;  // NOLINT: test helpers.

class RmsNormCudaTest : public CudaOpTest {};

TEST_P(RmsNormCudaTest, MatchesFloat64AndIsDeterministic) {
  const DType dtype = GetParam();
  const double bound = dtype == DType::kF32 ? 5e-6 : 1e-2;
  std::mt19937 random(std::random_device{}());
  struct Shape2 {
    int64_t rows, cols;
  };
  // Vector-path backwards with an even block count (in clusters) and an odd one (33 rows); blocks
  // with more rows than pipeline stages (3000 x 2048: 12 rows a block over 8 stages for bf16 and 6
  // for f32; 1000 x 8192 bf16: 4 over 3).
  for (const Shape2 s :
       {Shape2{1, 1}, Shape2{3, 7}, Shape2{17, 255}, Shape2{64, 1000}, Shape2{33, 1024},
        Shape2{5, 4099}, Shape2{3000, 2048}, Shape2{1000, 8192}}) {
    SCOPED_TRACE(::testing::Message()
                 << DTypeName(dtype) << " (" << s.rows << ", " << s.cols << ")");
    const int64_t n = s.rows * s.cols;
    const size_t e = DTypeSize(dtype);
    const HostData x = RandomData(dtype, n, random, -3, 3),
                   w = RandomData(dtype, s.cols, random, 0.5, 1.5),
                   dy = RandomData(dtype, n, random, -1, 1);
    DeviceBuffer dx_in(x.bytes), dw_in(w.bytes), ddy(dy.bytes);
    std::vector<char> first_dx, first_dw;
    for (int run = 0; run < 2; ++run) {
      const size_t workspace_bytes = RmsNormBackwardWorkspaceBytes(s.rows, s.cols);
      DeviceBuffer y(n * e), rstd(s.rows * 4), dx(n * e), dweight(s.cols * 4),
          workspace(workspace_bytes);
      ASSERT_TRUE(LaunchRmsNorm({.dtype = dtype,
                                 .x = dx_in.get(),
                                 .weight = dw_in.get(),
                                 .y = y.get(),
                                 .rstd = rstd.as<float>(),
                                 .rows = s.rows,
                                 .cols = s.cols,
                                 .eps = 1e-6f},
                                nullptr)
                      .ok());
      ASSERT_TRUE(LaunchRmsNormBackward({.dtype = dtype,
                                         .dy = ddy.get(),
                                         .x = dx_in.get(),
                                         .weight = dw_in.get(),
                                         .rstd = rstd.as<const float>(),
                                         .dx = dx.get(),
                                         .dweight = dweight.as<float>(),
                                         .rows = s.rows,
                                         .cols = s.cols,
                                         .workspace = workspace.get(),
                                         .workspace_bytes = workspace_bytes},
                                        nullptr)
                      .ok());
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      const auto ref = RmsNormFloat64(x.exact, w.exact, dy.exact, s.rows, s.cols, 1e-6);
      const std::vector<double> got_y = ValuesOf(dtype, y.Bytes()),
                                got_rstd = ValuesOf(DType::kF32, rstd.Bytes()),
                                got_dx = ValuesOf(dtype, dx.Bytes()),
                                got_dw = ValuesOf(DType::kF32, dweight.Bytes());
      for (const auto* v : {&got_y, &got_rstd, &got_dx, &got_dw}) {
        for (double d : *v) ASSERT_TRUE(std::isfinite(d)) << "an output element was not written";
      }
      EXPECT_LT(RelativeError(got_y, ref.y), bound);
      EXPECT_LT(RelativeError(got_rstd, ref.rstd), 5e-6);
      EXPECT_LT(RelativeError(got_dx, ref.dx, RmsNormDxScale(dy.exact, w.exact, ref.rstd, s.cols)),
                bound);
      EXPECT_LT(RelativeError(got_dw, ref.dweight), 5e-6);
      if (run == 0) {
        first_dx = dx.Bytes();
        first_dw = dweight.Bytes();
      } else {
        EXPECT_EQ(dx.Bytes(), first_dx);
        EXPECT_EQ(dweight.Bytes(), first_dw);
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(DTypes, RmsNormCudaTest, ::testing::Values(DType::kF32, DType::kBF16),
                         [](const auto& info) { return std::string(DTypeName(info.param)); });

// Without dweight (frozen norm weights) no workspace is needed and dx is the same, on both the
// vector path (cols 1024) and the scalar one (cols 1001).
TEST_F(RmsNormCudaTest, DweightIsOptional) {
  std::mt19937 random(std::random_device{}());
  for (int64_t cols : {int64_t{1024}, int64_t{1001}}) {
    const int64_t rows = 700, n = rows * cols;
    const HostData x = RandomData(DType::kBF16, n, random, -2, 2),
                   w = RandomData(DType::kBF16, cols, random, 0.5, 1.5),
                   dy = RandomData(DType::kBF16, n, random, -1, 1);
    const size_t workspace_bytes = RmsNormBackwardWorkspaceBytes(rows, cols);
    DeviceBuffer d_x(x.bytes), d_w(w.bytes), d_dy(dy.bytes), y(n * 2), rstd(rows * 4), dx1(n * 2),
        dx2(n * 2), dweight(cols * 4), workspace(workspace_bytes);
    ASSERT_TRUE(LaunchRmsNorm({.dtype = DType::kBF16,
                               .x = d_x.get(),
                               .weight = d_w.get(),
                               .y = y.get(),
                               .rstd = rstd.as<float>(),
                               .rows = rows,
                               .cols = cols},
                              nullptr)
                    .ok());
    RmsNormBackwardParams b{.dtype = DType::kBF16,
                            .dy = d_dy.get(),
                            .x = d_x.get(),
                            .weight = d_w.get(),
                            .rstd = rstd.as<const float>(),
                            .dx = dx1.get(),
                            .dweight = dweight.as<float>(),
                            .rows = rows,
                            .cols = cols,
                            .workspace = workspace.get(),
                            .workspace_bytes = workspace_bytes};
    ASSERT_TRUE(LaunchRmsNormBackward(b, nullptr).ok());
    b.dx = dx2.get();
    b.dweight = nullptr;
    b.workspace = nullptr;
    b.workspace_bytes = 0;
    ASSERT_TRUE(LaunchRmsNormBackward(b, nullptr).ok());
    EXPECT_EQ(dx1.Bytes(), dx2.Bytes()) << "cols " << cols;
  }
}

TEST_F(RmsNormCudaTest, BadArgumentsFailBeforeLaunching) {
  EXPECT_THAT(LaunchRmsNorm({.dtype = DType::kI64, .rows = 1, .cols = 1}, nullptr).message(),
              HasSubstr("dtype i64 is not supported"));
  EXPECT_THAT(LaunchRmsNorm({.rows = 2, .cols = 3}, nullptr).message(), HasSubstr("x is null"));
  EXPECT_TRUE(LaunchRmsNorm({.rows = 0, .cols = 3}, nullptr).ok());
  DeviceBuffer dw(3 * 4), x(6 * 4), rstd(2 * 4), small(4);
  EXPECT_THAT(LaunchRmsNormBackward({.dy = x.get(),
                                     .x = x.get(),
                                     .weight = x.get(),
                                     .rstd = rstd.as<float>(),
                                     .dx = x.get(),
                                     .dweight = dw.as<float>(),
                                     .rows = 2,
                                     .cols = 3,
                                     .workspace = small.get(),
                                     .workspace_bytes = 4},
                                    nullptr)
                  .message(),
              HasSubstr("the workspace has 4 bytes, 24 are needed"));
  ASSERT_TRUE(
      LaunchRmsNormBackward({.dweight = dw.as<float>(), .rows = 0, .cols = 3}, nullptr).ok());
  EXPECT_EQ(ValuesOf(DType::kF32, dw.Bytes()), (std::vector<double>{0, 0, 0}));
}

}  // namespace
}  // namespace mimo::kernels
