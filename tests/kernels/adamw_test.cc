// AdamW's and the sum of squares' CPU twins against float64: three AdamW steps with bf16 and f32
// gradients (master weights within 1e-6 relative of the float64 run, bf16 model weights the
// rounded masters), clipping through grad_scale, the sum of squares, and argument errors.
#include "kernels/adamw.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "common/bfloat16.h"
#include "tests/kernels/adamw_reference.h"
#include "tests/kernels/op_test_util.h"

namespace mimo::kernels {
namespace {

using ::testing::HasSubstr;
using namespace ::mimo::kernels::testing;  // NOLINT: test helpers.

class AdamWCpuTest : public ::testing::TestWithParam<DType> {};

TEST_P(AdamWCpuTest, ThreeStepsMatchFloat64) {
  const DType grad_dtype = GetParam();
  std::mt19937 random(std::random_device{}());
  const int64_t n = 10007;
  const HostData init = RandomData(DType::kF32, n, random, -1, 1);
  std::vector<float> master(init.exact.begin(), init.exact.end()), m(n, 0.0f), v(n, 0.0f);
  std::vector<uint16_t> model(n, 0x7fc0);
  AdamWState ref{init.exact, std::vector<double>(n, 0.0), std::vector<double>(n, 0.0)};
  for (int64_t step = 1; step <= 3; ++step) {
    const HostData grad = RandomData(grad_dtype, n, random, -0.01f, 0.01f);
    const AdamWParams p{.n = n,
                        .master = master.data(),
                        .m = m.data(),
                        .v = v.data(),
                        .grad = grad.data(),
                        .grad_dtype = grad_dtype,
                        .model = model.data(),
                        .lr = 1e-3f,
                        .beta1 = 0.9f,
                        .beta2 = 0.95f,
                        .eps = 1e-8f,
                        .weight_decay = 0.1f,
                        .grad_scale = 0.5f,
                        .step = step};
    ASSERT_TRUE(AdamWCpu(p).ok());
    AdamWFloat64(ref, grad.exact, 1e-3, 0.9, 0.95, 1e-8, 0.1, 0.5, step);
  }
  EXPECT_LT(RelativeError(std::vector<double>(master.begin(), master.end()), ref.master), 1e-6);
  EXPECT_LT(RelativeError(std::vector<double>(v.begin(), v.end()), ref.v), 1e-5);
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(model[i], FloatToBFloat16(master[i])) << i;
}

INSTANTIATE_TEST_SUITE_P(GradDTypes, AdamWCpuTest, ::testing::Values(DType::kF32, DType::kBF16),
                         [](const auto& info) { return std::string(DTypeName(info.param)); });

TEST(SumSquaresCpuTest, MatchesFloat64) {
  std::mt19937 random(3);
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (int64_t n : {int64_t{0}, int64_t{1}, int64_t{1000003}}) {
      const HostData x = RandomData(dtype, n, random, -2, 2);
      float out = -1;
      ASSERT_TRUE(SumSquaresCpu({.dtype = dtype, .x = x.data(), .n = n, .out = &out}).ok());
      double want = 0;
      for (double e : x.exact) want += e * e;
      EXPECT_NEAR(out, want, 1e-7 * want) << DTypeName(dtype) << " n " << n;
    }
  }
}

TEST(AdamWCpuTest, BadArgumentsAreNamed) {
  float buf[2] = {};
  const AdamWParams good{.n = 2, .master = buf, .m = buf, .v = buf, .grad = buf};
  EXPECT_TRUE(CheckAdamW(good).ok());
  AdamWParams p = good;
  p.beta2 = 1.0f;
  EXPECT_THAT(AdamWCpu(p).message(), HasSubstr("betas must be in [0, 1)"));
  p = good;
  p.step = 0;
  EXPECT_THAT(AdamWCpu(p).message(), HasSubstr("step 0"));
  p = good;
  p.grad_dtype = DType::kI32;
  EXPECT_THAT(AdamWCpu(p).message(), HasSubstr("AdamW (grad): dtype i32"));
  p = good;
  p.v = nullptr;
  EXPECT_THAT(AdamWCpu(p).message(), HasSubstr("v is null"));
  EXPECT_THAT(SumSquaresCpu({.n = 0}).message(), HasSubstr("out is null"));
}

}  // namespace
}  // namespace mimo::kernels
