// The GEMM's CPU twin against float64 on fresh random inputs and odd shapes, every transpose, with
// and without bias, GELU and accumulation (relative error: f32 < 2e-6, bf16 outputs < 1e-2),
// poisoned outputs fully written, and argument errors.
#include "kernels/gemm.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
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
  const double bound = dt == DType::kF32 ? 2e-6 : 1e-2;
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

// A batch equals its products one by one (bitwise: the same CPU code), in any order.
TEST(GemmBatchCpuTest, EqualsTheProductsOneByOne) {
  std::mt19937 random(std::random_device{}());
  struct Case {
    int64_t m, n, k;
    bool ta, tb, accumulate;
  };
  const std::vector<Case> cases = {{7, 5, 3, false, true, false},
                                   {1, 9, 17, true, false, true},
                                   {0, 4, 4, false, false, false},
                                   {6, 8, 0, false, false, false},
                                   {33, 2, 11, true, true, true}};
  std::vector<HostData> a, b, d_batch, d_single;
  for (const Case& c : cases) {
    a.push_back(RandomData(DType::kBF16, c.m * c.k, random, -1, 1));
    b.push_back(RandomData(DType::kBF16, c.k * c.n, random, -1, 1));
    d_batch.push_back(c.accumulate ? RandomData(DType::kF32, c.m * c.n, random, -1, 1)
                                   : PoisonedData(DType::kF32, c.m * c.n));
    d_single.push_back(d_batch.back());
  }
  const auto params = [&](std::vector<HostData>& d) {
    std::vector<GemmParams> out;
    for (size_t i = 0; i < cases.size(); ++i) {
      const Case& c = cases[i];
      out.push_back({.ab_dtype = DType::kBF16,
                     .d_dtype = DType::kF32,
                     .a = a[i].data(),
                     .b = b[i].data(),
                     .d = d[i].data(),
                     .transpose_a = c.ta,
                     .transpose_b = c.tb,
                     .m = c.m,
                     .n = c.n,
                     .k = c.k,
                     .accumulate = c.accumulate});
    }
    return out;
  };
  std::vector<GemmParams> batch = params(d_batch);
  std::reverse(batch.begin(), batch.end());
  ASSERT_TRUE(GemmBatchCpu(batch).ok());
  for (const GemmParams& p : params(d_single)) ASSERT_TRUE(GemmCpu(p).ok());
  for (size_t i = 0; i < cases.size(); ++i) EXPECT_EQ(d_batch[i].bytes, d_single[i].bytes) << i;
  EXPECT_TRUE(GemmBatchCpu({}).ok());
}

TEST(GemmBatchCpuTest, OverlapsAndEpiloguesAreRefusedBeforeAnyProductRuns) {
  std::vector<float> buf(64, 1.0f);
  float* x = buf.data();
  const GemmParams p{.a = x, .b = x + 4, .d = x + 8, .m = 2, .n = 2, .k = 2};  // d: [8, 12).
  GemmParams writes_a = p;  // Its output is p's a.
  writes_a.a = x + 16;
  writes_a.b = x + 20;
  writes_a.d = x + 2;  // [2, 6) overlaps p's a [0, 4) and b [4, 8).
  EXPECT_THAT(CheckGemmBatch({p, writes_a}).message(),
              HasSubstr("an input of product 0 overlaps the output of product 1"));
  GemmParams same_d = p;
  same_d.a = x + 16;
  same_d.b = x + 20;
  same_d.d = x + 10;  // [10, 14) overlaps p's d [8, 12).
  EXPECT_THAT(CheckGemmBatch({p, same_d}).message(),
              HasSubstr("the outputs of products 0 and 1 overlap"));
  GemmParams next_to = same_d;
  next_to.d = x + 12;  // Adjacent, not overlapping; and the inputs may be shared.
  next_to.a = p.a;
  EXPECT_TRUE(CheckGemmBatch({p, next_to}).ok());
  GemmParams reads_own_output = p;
  reads_own_output.a = x + 8;
  EXPECT_THAT(CheckGemmBatch({reads_own_output}).message(),
              HasSubstr("an input of product 0 overlaps the output of product 0"));
  GemmParams with_bias = next_to;
  with_bias.bias = x + 40;
  EXPECT_THAT(CheckGemmBatch({p, with_bias}).message(),
              HasSubstr("GemmBatch: product 1: a batch takes no bias"));
  GemmParams bad = p;
  bad.m = -1;
  EXPECT_THAT(CheckGemmBatch({bad}).message(), HasSubstr("GemmBatch: product 0: Gemm: bad shape"));
  // Nothing ran: the first product's output is still ones.
  const std::vector<float> before = buf;
  EXPECT_FALSE(GemmBatchCpu({p, same_d}).ok());
  EXPECT_EQ(buf, before);
}

}  // namespace
}  // namespace mimo::kernels
