// LayerNorm's CUDA kernels against float64 on fresh random inputs and odd shapes (f32 relative
// error < 5e-6: fp32 tree sums; bf16 < 1e-2; dx relative to its cancelling terms), poisoned
// outputs fully written, bitwise-deterministic reruns, and argument errors. Skips without a GPU.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "kernels/layernorm.h"
#include "tests/kernels/cuda_test_util.h"
#include "tests/kernels/layernorm_reference.h"
#include "tests/kernels/op_test_util.h"

namespace mimo::kernels {
namespace {

using ::testing::HasSubstr;
using namespace ::mimo::kernels::testing;  // NOLINT: test helpers.

class LayerNormCudaTest : public CudaOpTest {};

TEST_P(LayerNormCudaTest, MatchesFloat64AndIsDeterministic) {
  const DType dtype = GetParam();
  const double bound = dtype == DType::kF32 ? 5e-6 : 1e-2;
  std::mt19937 random(std::random_device{}());
  for (const auto& [rows, cols] : {std::pair<int64_t, int64_t>{1, 2},
                                   {3, 7},
                                   {17, 255},
                                   {64, 1000},
                                   {5, 4099},
                                   {1000, 1024}}) {
    SCOPED_TRACE(::testing::Message() << DTypeName(dtype) << " (" << rows << ", " << cols << ")");
    const int64_t n = rows * cols;
    const size_t e = DTypeSize(dtype);
    const HostData x = RandomData(dtype, n, random, 2, 5),
                   w = RandomData(dtype, cols, random, 0.5, 1.5),
                   b = RandomData(dtype, cols, random, -1, 1),
                   dy = RandomData(dtype, n, random, -1, 1);
    const DeviceBuffer d_x(x.bytes), d_w(w.bytes), d_b(b.bytes), d_dy(dy.bytes);
    const auto ref = LayerNormFloat64(x.exact, w.exact, b.exact, dy.exact, rows, cols, 1e-5);
    std::vector<char> first_dx, first_dw;
    for (int run = 0; run < 2; ++run) {
      const DeviceBuffer y(n * e), mean(rows * 4), rstd(rows * 4), dx(n * e), dw(cols * 4),
          db(cols * 4), workspace(LayerNormBackwardWorkspaceBytes(rows, cols));
      ASSERT_TRUE(LaunchLayerNorm({.dtype = dtype,
                                   .x = d_x.get(),
                                   .weight = d_w.get(),
                                   .bias = d_b.get(),
                                   .y = y.get(),
                                   .mean = mean.as<float>(),
                                   .rstd = rstd.as<float>(),
                                   .rows = rows,
                                   .cols = cols},
                                  nullptr)
                      .ok());
      ASSERT_TRUE(
          LaunchLayerNormBackward({.dtype = dtype,
                                   .dy = d_dy.get(),
                                   .x = d_x.get(),
                                   .weight = d_w.get(),
                                   .mean = mean.as<const float>(),
                                   .rstd = rstd.as<const float>(),
                                   .dx = dx.get(),
                                   .dweight = dw.as<float>(),
                                   .dbias = db.as<float>(),
                                   .rows = rows,
                                   .cols = cols,
                                   .workspace = workspace.get(),
                                   .workspace_bytes = LayerNormBackwardWorkspaceBytes(rows, cols)},
                                  nullptr)
              .ok());
      const std::vector<double> got_y = ValuesOf(dtype, y.Bytes()),
                                got_dx = ValuesOf(dtype, dx.Bytes()),
                                got_rstd = ValuesOf(DType::kF32, rstd.Bytes()),
                                got_dw = ValuesOf(DType::kF32, dw.Bytes()),
                                got_db = ValuesOf(DType::kF32, db.Bytes());
      for (const auto* v : {&got_y, &got_dx, &got_rstd, &got_dw, &got_db}) {
        ASSERT_TRUE(AllFinite(*v)) << "an output element was not written";
      }
      EXPECT_LT(RelativeError(got_y, ref.y), bound);
      EXPECT_LT(RelativeError(got_rstd, ref.rstd), 5e-6);
      EXPECT_LT(RelativeError(got_dx, ref.dx, ref.dx_scale), bound);
      EXPECT_LT(RelativeError(got_dw, ref.dweight), 5e-6);
      EXPECT_LT(RelativeError(got_db, ref.dbias), 5e-6);
      if (run == 0) {
        first_dx = dx.Bytes();
        first_dw = dw.Bytes();
      } else {
        EXPECT_EQ(dx.Bytes(), first_dx);
        EXPECT_EQ(dw.Bytes(), first_dw);
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(DTypes, LayerNormCudaTest, ::testing::Values(DType::kF32, DType::kBF16),
                         [](const auto& info) { return std::string(DTypeName(info.param)); });

TEST_F(LayerNormCudaTest, BadArgumentsFailBeforeLaunching) {
  EXPECT_THAT(LaunchLayerNorm({.rows = 2, .cols = 3}, nullptr).message(), HasSubstr("x is null"));
  EXPECT_TRUE(LaunchLayerNorm({.rows = 0, .cols = 3}, nullptr).ok());
  const DeviceBuffer dw(3 * 4), db(3 * 4);
  ASSERT_TRUE(
      LaunchLayerNormBackward(
          {.dweight = dw.as<float>(), .dbias = db.as<float>(), .rows = 0, .cols = 3}, nullptr)
          .ok());
  EXPECT_EQ(ValuesOf(DType::kF32, db.Bytes()), (std::vector<double>{0, 0, 0}));
  // Rows to reduce need the partial sums' workspace.
  const DeviceBuffer x(2 * 3 * 4), dx(2 * 3 * 4), stats(2 * 4);
  EXPECT_THAT(LaunchLayerNormBackward({.dy = x.get(),
                                       .x = x.get(),
                                       .weight = dw.get(),
                                       .mean = stats.as<const float>(),
                                       .rstd = stats.as<const float>(),
                                       .dx = dx.get(),
                                       .dweight = dw.as<float>(),
                                       .dbias = db.as<float>(),
                                       .rows = 2,
                                       .cols = 3},
                                      nullptr)
                  .message(),
              HasSubstr("workspace has 0 bytes"));
}

}  // namespace
}  // namespace mimo::kernels
