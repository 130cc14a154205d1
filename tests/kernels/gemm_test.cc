// The GEMM's CPU twin against float64 on fresh random inputs and odd shapes, every transpose, with
// and without bias, GELU and accumulation (relative error: f32 < 1e-5, bf16 outputs < 1e-2),
// poisoned outputs fully written, and argument errors.
#include "kernels/gemm.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "tests/kernels/gemm_reference.h"
#include "tests/kernels/op_test_util.h"

namespace mimo::kernels {
namespace {

using ::testing::HasSubstr;
using namespace ::mimo::kernels::testing;  // NOLINT: test helpers.

struct DTypes {
  DType ab, d;
};

class GemmCpuTest : public ::testing::TestWithParam<DTypes> {};

TEST_P(GemmCpuTest, MatchesFloat64) {
  const auto [ab, dt] = GetParam();
  const double bound = dt == DType::kF32 ? 1e-5 : 1e-2;
  std::mt19937 random(std::random_device{}());
  struct Case {
    int64_t m, n, k;
    bool ta, tb, bias, gelu, accumulate;
  };
  for (const Case& c : {Case{1, 1, 1, false, false, false, false, false},
                        Case{3, 5, 7, true, false, true, false, false},
                        Case{17, 33, 65, false, true, true, true, false},
                        Case{64, 48, 200, true, true, false, true, false},
                        Case{9, 40, 31, false, false, false, false, true},
                        Case{5, 6, 0, false, false, false, false, false}}) {
    SCOPED_TRACE(::testing::Message()
                 << DTypeName(ab) << "->" << DTypeName(dt) << " m " << c.m << " n " << c.n << " k "
                 << c.k << " ta " << c.ta << " tb " << c.tb << " bias " << c.bias << " gelu "
                 << c.gelu << " acc " << c.accumulate);
    const HostData a = RandomData(ab, c.m * c.k, random, -1, 1);
    const HostData b = RandomData(ab, c.k * c.n, random, -1, 1);
    const HostData bias = RandomData(dt, c.n, random, -1, 1);
    HostData d =
        c.accumulate ? RandomData(dt, c.m * c.n, random, -1, 1) : PoisonedData(dt, c.m * c.n);
    HostData pre = PoisonedData(dt, c.m * c.n);
    const std::vector<double> d_before = d.exact;
    ASSERT_TRUE(GemmCpu({.ab_dtype = ab,
                         .d_dtype = dt,
                         .a = a.data(),
                         .b = b.data(),
                         .d = d.data(),
                         .transpose_a = c.ta,
                         .transpose_b = c.tb,
                         .m = c.m,
                         .n = c.n,
                         .k = c.k,
                         .accumulate = c.accumulate,
                         .bias = c.bias ? bias.data() : nullptr,
                         .activation = c.gelu ? GemmActivation::kGeluTanh : GemmActivation::kNone,
                         .pre_activation = c.gelu ? pre.data() : nullptr})
                    .ok());
    std::vector<double> want = GemmFloat64(a.exact, c.ta, b.exact, c.tb, c.m, c.n, c.k,
                                           c.bias ? bias.exact : std::vector<double>{});
    const std::vector<double> got = ValuesOf(dt, d.bytes);
    ASSERT_TRUE(AllFinite(got)) << "an output element was not written";
    if (c.gelu) {
      EXPECT_LT(RelativeError(ValuesOf(dt, pre.bytes), want), bound);
      for (double& v : want) v = GeluTanhFloat64(v);
    }
    if (c.accumulate) {
      for (size_t i = 0; i < want.size(); ++i) want[i] += d_before[i];
    }
    EXPECT_LT(RelativeError(got, want), bound);
  }
}

INSTANTIATE_TEST_SUITE_P(DTypes, GemmCpuTest,
                         ::testing::Values(DTypes{DType::kF32, DType::kF32},
                                           DTypes{DType::kBF16, DType::kBF16},
                                           DTypes{DType::kBF16, DType::kF32}),
                         [](const auto& info) {
                           return std::string(DTypeName(info.param.ab)) + "_" +
                                  std::string(DTypeName(info.param.d));
                         });

TEST(GemmCpuTest, BadArgumentsAreNamed) {
  float x = 0;
  EXPECT_THAT(GemmCpu({.ab_dtype = DType::kI32, .m = 1, .n = 1, .k = 1}).message(),
              HasSubstr("dtype i32 is not supported"));
  EXPECT_THAT(
      GemmCpu({.ab_dtype = DType::kF32, .d_dtype = DType::kBF16, .m = 1, .n = 1, .k = 1}).message(),
      HasSubstr("d dtype bf16 is not supported with a and b in f32"));
  EXPECT_THAT(GemmCpu({.m = 1, .n = -1, .k = 1}).message(), HasSubstr("bad shape"));
  EXPECT_THAT(GemmCpu({.m = int64_t{1} << 31, .n = 1, .k = 1}).message(), HasSubstr("bad shape"));
  EXPECT_THAT(GemmCpu({.a = &x, .d = &x, .m = 1, .n = 1, .k = 1}).message(),
              HasSubstr("b is null"));
  EXPECT_THAT(GemmCpu({.a = &x, .b = &x, .m = 1, .n = 1, .k = 1}).message(),
              HasSubstr("d is null"));
  EXPECT_THAT(GemmCpu({.a = &x,
                       .b = &x,
                       .d = &x,
                       .m = 1,
                       .n = 1,
                       .k = 1,
                       .activation = GemmActivation::kGeluTanh})
                  .message(),
              HasSubstr("pre_activation is null"));
  EXPECT_THAT(
      GemmCpu({.a = &x, .b = &x, .d = &x, .m = 1, .n = 1, .k = 1, .accumulate = true, .bias = &x})
          .message(),
      HasSubstr("accumulation cannot take a bias"));
  EXPECT_THAT(GemmCpu({.d = &x, .m = 1, .n = 1, .k = 0, .bias = &x}).message(),
              HasSubstr("k = 0 cannot take a bias"));
  EXPECT_TRUE(GemmCpu({.m = 0, .n = 3, .k = 2}).ok());
}

}  // namespace
}  // namespace mimo::kernels
