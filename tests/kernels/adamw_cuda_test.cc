// AdamW's and the sum of squares' CUDA kernels against float64 (and the CPU twin): three steps
// with bf16 and f32 gradients and bf16 model weights, masters within 1e-6 relative; the sum of
// squares within 1e-5 relative and bitwise equal over reruns. Skips without a GPU.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

#include "kernels/adamw.h"
#include "tests/kernels/adamw_reference.h"
#include "tests/kernels/cuda_test_util.h"
#include "tests/kernels/op_test_util.h"

namespace mimo::kernels {
namespace {

using ::testing::HasSubstr;
using namespace ::mimo::kernels::testing;  // NOLINT: test helpers.

class AdamWCudaTest : public CudaOpTest {};

TEST_P(AdamWCudaTest, ThreeStepsMatchFloat64) {
  const DType grad_dtype = GetParam();
  std::mt19937 random(std::random_device{}());
  const int64_t n = (int64_t{1} << 22) + 5;
  const HostData init = RandomData(DType::kF32, n, random, -1, 1);
  const DeviceBuffer master(init.bytes), m(std::vector<char>(n * 4, 0)),
      v(std::vector<char>(n * 4, 0)), model(n * 2);
  AdamWState ref{init.exact, std::vector<double>(n, 0.0), std::vector<double>(n, 0.0)};
  for (int64_t step = 1; step <= 3; ++step) {
    const HostData grad = RandomData(grad_dtype, n, random, -0.01f, 0.01f);
    const DeviceBuffer d_grad(grad.bytes);
    ASSERT_TRUE(LaunchAdamW({.n = n,
                             .master = master.as<float>(),
                             .m = m.as<float>(),
                             .v = v.as<float>(),
                             .grad = d_grad.get(),
                             .grad_dtype = grad_dtype,
                             .model = model.get(),
                             .lr = 1e-3f,
                             .beta1 = 0.9f,
                             .beta2 = 0.95f,
                             .eps = 1e-8f,
                             .weight_decay = 0.1f,
                             .grad_scale = 0.5f,
                             .step = step},
                            nullptr)
                    .ok());
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    AdamWFloat64(ref, grad.exact, 1e-3, 0.9, 0.95, 1e-8, 0.1, 0.5, step);
  }
  const std::vector<double> got = ValuesOf(DType::kF32, master.Bytes());
  EXPECT_LT(RelativeError(got, ref.master), 1e-6);
  const std::vector<double> got_model = ValuesOf(DType::kBF16, model.Bytes());
  EXPECT_LT(RelativeError(got_model, ref.master), 1e-2);
}

INSTANTIATE_TEST_SUITE_P(GradDTypes, AdamWCudaTest, ::testing::Values(DType::kF32, DType::kBF16),
                         [](const auto& info) { return std::string(DTypeName(info.param)); });

TEST_F(AdamWCudaTest, SumSquaresMatchesFloat64AndRepeats) {
  std::mt19937 random(std::random_device{}());
  const DeviceBuffer workspace(SumSquaresWorkspaceBytes());
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    // 7: one float4 and a scalar tail of 3, small enough that a lost tail element shows.
    for (int64_t n : {int64_t{0}, int64_t{1}, int64_t{7}, int64_t{1000003}, int64_t{1} << 26}) {
      SCOPED_TRACE(::testing::Message() << DTypeName(dtype) << " n " << n);
      const HostData x = RandomData(dtype, n, random, -2, 2);
      const DeviceBuffer d_x(x.bytes), out(4), again(4);
      ASSERT_TRUE(LaunchSumSquares({.dtype = dtype, .x = d_x.get(), .n = n, .out = out.as<float>()},
                                   workspace.get(), nullptr)
                      .ok());
      ASSERT_TRUE(
          LaunchSumSquares({.dtype = dtype, .x = d_x.get(), .n = n, .out = again.as<float>()},
                           workspace.get(), nullptr)
              .ok());
      double want = 0;
      for (double e : x.exact) want += e * e;
      const double got = ValuesOf(DType::kF32, out.Bytes())[0];
      EXPECT_NEAR(got, want, 1e-5 * want);  // fp32 partial sums of 256 elements each.
      EXPECT_EQ(out.Bytes(), again.Bytes());
      if (n < 2) continue;
      // From the second element: fp32 that is not 16-byte aligned takes the scalar path.
      const void* second = static_cast<const char*>(d_x.get()) + DTypeSize(dtype);
      ASSERT_TRUE(
          LaunchSumSquares({.dtype = dtype, .x = second, .n = n - 1, .out = again.as<float>()},
                           workspace.get(), nullptr)
              .ok());
      const double rest = want - x.exact[0] * x.exact[0];
      EXPECT_NEAR(ValuesOf(DType::kF32, again.Bytes())[0], rest, 1e-5 * rest);
    }
  }
  EXPECT_THAT(LaunchSumSquares({.n = 0, .out = nullptr}, workspace.get(), nullptr).message(),
              HasSubstr("out is null"));
}

}  // namespace
}  // namespace mimo::kernels
