// The linear layer's CPU twin: forward and backward against float64 on fresh random inputs and
// odd shapes, with and without bias and GELU, accumulating or not (relative error: f32 < 2e-6,
// bf16 < 1e-2), poisoned outputs fully written, the backward against central differences, and
// argument errors.
#include "kernels/linear.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "tests/kernels/gemm_reference.h"
#include "tests/kernels/op_test_util.h"

namespace mimo::kernels {
namespace {

using ::testing::HasSubstr;
using namespace ::mimo::kernels::testing;  // NOLINT: test helpers.

class LinearCpuTest : public ::testing::TestWithParam<DType> {};

TEST_P(LinearCpuTest, MatchesFloat64ForwardAndBackward) {
  const DType dtype = GetParam();
  const double bound = dtype == DType::kF32 ? 2e-6 : 1e-2;
  std::mt19937 random(std::random_device{}());
  struct Case {
    int64_t tokens, in, out;
    bool bias, gelu, accumulate, dx;
  };
  for (const Case& c :
       {Case{1, 1, 1, false, false, false, true}, Case{7, 5, 3, true, false, true, true},
        Case{33, 17, 24, true, true, false, true}, Case{65, 40, 9, false, true, true, false},
        Case{0, 8, 4, true, true, false, true}}) {
    SCOPED_TRACE(::testing::Message()
                 << DTypeName(dtype) << " tokens " << c.tokens << " in " << c.in << " out " << c.out
                 << " bias " << c.bias << " gelu " << c.gelu << " acc " << c.accumulate);
    const HostData x = RandomData(dtype, c.tokens * c.in, random, -1, 1);
    const HostData w = RandomData(dtype, c.out * c.in, random, -1, 1);
    const HostData bias = RandomData(dtype, c.out, random, -1, 1);
    const HostData dy = RandomData(dtype, c.tokens * c.out, random, -1, 1);
    HostData y = PoisonedData(dtype, c.tokens * c.out), pre = PoisonedData(dtype, c.tokens * c.out),
             dpre = PoisonedData(dtype, c.tokens * c.out),
             dx = PoisonedData(dtype, c.tokens * c.in);
    const HostData dw0 = RandomData(DType::kF32, c.out * c.in, random, -1, 1);
    const HostData db0 = RandomData(DType::kF32, c.out, random, -1, 1);
    HostData dw = c.accumulate ? dw0 : PoisonedData(DType::kF32, c.out * c.in);
    HostData dbias = c.accumulate ? db0 : PoisonedData(DType::kF32, c.out);
    const GemmActivation act = c.gelu ? GemmActivation::kGeluTanh : GemmActivation::kNone;
    ASSERT_TRUE(LinearCpu({.dtype = dtype,
                           .x = x.data(),
                           .w = w.data(),
                           .bias = c.bias ? bias.data() : nullptr,
                           .y = y.data(),
                           .activation = act,
                           .pre_activation = pre.data(),
                           .tokens = c.tokens,
                           .in = c.in,
                           .out = c.out})
                    .ok());
    ASSERT_TRUE(LinearBackwardCpu({.dtype = dtype,
                                   .dy = dy.data(),
                                   .x = x.data(),
                                   .w = w.data(),
                                   .activation = act,
                                   .pre_activation = pre.data(),
                                   .dpre_activation = dpre.data(),
                                   .dx = c.dx ? dx.data() : nullptr,
                                   .dw = static_cast<float*>(dw.data()),
                                   .dbias = c.bias ? static_cast<float*>(dbias.data()) : nullptr,
                                   .accumulate = c.accumulate,
                                   .tokens = c.tokens,
                                   .in = c.in,
                                   .out = c.out})
                    .ok());
    // The backward starts from the stored (rounded) pre-activation, as the layer does.
    const LinearReference ref =
        LinearFloat64(x.exact, w.exact, c.bias ? bias.exact : std::vector<double>(c.out, 0.0),
                      dy.exact, c.gelu, c.tokens, c.in, c.out);
    const std::vector<double> got_y = ValuesOf(dtype, y.bytes);
    ASSERT_TRUE(AllFinite(got_y));
    EXPECT_LT(RelativeError(got_y, ref.y), bound);
    if (c.dx) {
      EXPECT_LT(RelativeError(ValuesOf(dtype, dx.bytes), ref.dx), bound);
    }
    std::vector<double> want_dw = ref.dw, want_db = ref.dbias;
    if (c.accumulate) {
      for (size_t i = 0; i < want_dw.size(); ++i) want_dw[i] += dw0.exact[i];
      for (size_t i = 0; i < want_db.size(); ++i) want_db[i] += db0.exact[i];
    }
    const std::vector<double> got_dw = ValuesOf(DType::kF32, dw.bytes);
    ASSERT_TRUE(AllFinite(got_dw));
    EXPECT_LT(RelativeError(got_dw, want_dw), bound);
    if (c.bias) {
      EXPECT_LT(RelativeError(ValuesOf(DType::kF32, dbias.bytes), want_db), bound);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(DTypes, LinearCpuTest, ::testing::Values(DType::kF32, DType::kBF16),
                         [](const auto& info) { return std::string(DTypeName(info.param)); });

// loss = sum(y * r): its gradients by the backward and by central differences of the forward.
TEST(LinearCpuGradientTest, BackwardMatchesCentralDifferences) {
  constexpr int64_t kTokens = 3, kIn = 4, kOut = 5;
  std::mt19937 random(std::random_device{}());
  std::uniform_real_distribution<float> dist(-1, 1);
  std::vector<float> x(kTokens * kIn), w(kOut * kIn), bias(kOut), r(kTokens * kOut);
  for (auto* v : {&x, &w, &bias, &r}) {
    for (float& e : *v) e = dist(random);
  }
  const auto loss = [&]() {
    std::vector<float> y(kTokens * kOut), pre(kTokens * kOut);
    EXPECT_TRUE(LinearCpu({.x = x.data(),
                           .w = w.data(),
                           .bias = bias.data(),
                           .y = y.data(),
                           .activation = GemmActivation::kGeluTanh,
                           .pre_activation = pre.data(),
                           .tokens = kTokens,
                           .in = kIn,
                           .out = kOut})
                    .ok());
    double sum = 0;
    for (size_t i = 0; i < y.size(); ++i) sum += static_cast<double>(y[i]) * r[i];
    return sum;
  };
  std::vector<float> y(kTokens * kOut), pre(kTokens * kOut), dpre(kTokens * kOut);
  std::vector<float> dx(kTokens * kIn), dw(kOut * kIn), dbias(kOut);
  ASSERT_TRUE(LinearCpu({.x = x.data(),
                         .w = w.data(),
                         .bias = bias.data(),
                         .y = y.data(),
                         .activation = GemmActivation::kGeluTanh,
                         .pre_activation = pre.data(),
                         .tokens = kTokens,
                         .in = kIn,
                         .out = kOut})
                  .ok());
  ASSERT_TRUE(LinearBackwardCpu({.dy = r.data(),
                                 .x = x.data(),
                                 .w = w.data(),
                                 .activation = GemmActivation::kGeluTanh,
                                 .pre_activation = pre.data(),
                                 .dpre_activation = dpre.data(),
                                 .dx = dx.data(),
                                 .dw = dw.data(),
                                 .dbias = dbias.data(),
                                 .tokens = kTokens,
                                 .in = kIn,
                                 .out = kOut})
                  .ok());
  constexpr float h = 1e-2f;
  for (auto [values, grads, name] :
       {std::tuple{&x, &dx, "x"}, std::tuple{&w, &dw, "w"}, std::tuple{&bias, &dbias, "bias"}}) {
    for (size_t i = 0; i < values->size(); ++i) {
      const float saved = (*values)[i];
      (*values)[i] = saved + h;
      const double plus = loss();
      (*values)[i] = saved - h;
      const double minus = loss();
      (*values)[i] = saved;
      EXPECT_NEAR((*grads)[i], (plus - minus) / (2 * h), 2e-3) << name << "[" << i << "]";
    }
  }
}

TEST(LinearCpuTest, BadArgumentsAreNamed) {
  float v = 0;
  EXPECT_THAT(LinearCpu({.dtype = DType::kI32, .tokens = 1, .in = 1, .out = 1}).message(),
              HasSubstr("dtype i32 is not supported"));
  EXPECT_THAT(LinearCpu({.tokens = 2, .in = 0, .out = 3}).message(), HasSubstr("bad shape"));
  EXPECT_THAT(LinearCpu({.x = &v, .w = &v, .tokens = 1, .in = 1, .out = 1}).message(),
              HasSubstr("y is null"));
  EXPECT_THAT(LinearCpu({.x = &v,
                         .w = &v,
                         .y = &v,
                         .activation = GemmActivation::kGeluTanh,
                         .tokens = 1,
                         .in = 1,
                         .out = 1})
                  .message(),
              HasSubstr("pre_activation is null"));
  EXPECT_THAT(LinearBackwardCpu({.tokens = 1, .in = 1, .out = 1}).message(),
              HasSubstr("dw is null"));
  EXPECT_THAT(LinearBackwardCpu({.dy = &v,
                                 .x = &v,
                                 .w = &v,
                                 .activation = GemmActivation::kGeluTanh,
                                 .pre_activation = &v,
                                 .dw = &v,
                                 .tokens = 1,
                                 .in = 1,
                                 .out = 1})
                  .message(),
              HasSubstr("dpre_activation is null"));
  EXPECT_TRUE(LinearCpu({.tokens = 0, .in = 1, .out = 0}).ok());
}

}  // namespace
}  // namespace mimo::kernels
