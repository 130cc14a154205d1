// The grouped GEMM's CPU twin against float64 for both modes and every dtype pair (relative
// error: f32 outputs < 3e-6, bf16 outputs < 1e-2; rows outside every group untouched), and its
// argument errors.
#include "kernels/grouped_gemm.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tests/kernels/grouped_gemm_reference.h"
#include "tests/kernels/op_test_util.h"

namespace mimo::kernels {
namespace {

using ::testing::HasSubstr;
using namespace ::mimo::kernels::testing;  // NOLINT: test helpers.

struct DTypes {
  DType ab, d;
};

class GroupedGemmTest : public ::testing::TestWithParam<DTypes> {};

TEST_P(GroupedGemmTest, MatchesFloat64) {
  const auto [ab, dt] = GetParam();
  const unsigned seed = std::random_device{}();
  std::mt19937 random(seed);
  for (const GroupedGemmCase& c : GroupedGemmCases()) {
    SCOPED_TRACE(::testing::Message()
                 << c.name << " " << DTypeName(ab) << "->" << DTypeName(dt) << " seed " << seed);
    const GroupedGemmSizes size = SizesOf(c);
    HostData a = RandomData(ab, size.a, random, -1, 1);
    HostData b = RandomData(ab, size.b, random, -1, 1);
    HostData d = c.accumulate ? RandomData(dt, size.d, random, -1, 1) : PoisonedData(dt, size.d);
    const std::vector<double> want = GroupedGemmFloat64(c, a.exact, b.exact, ValuesOf(dt, d.bytes));
    const std::vector<int32_t> offsets = OffsetsOf(c);
    const GroupedGemmParams p = ParamsOf(c, ab, dt, a.data(), b.data(), d.data(), offsets.data());
    ASSERT_TRUE(GroupedGemmCpu(p).ok()) << GroupedGemmCpu(p);
    EXPECT_LT(GroupedGemmError(ValuesOf(dt, d.bytes), want), dt == DType::kF32 ? 3e-6 : 1e-2);
  }
}

INSTANTIATE_TEST_SUITE_P(DTypes, GroupedGemmTest,
                         ::testing::Values(DTypes{DType::kF32, DType::kF32},
                                           DTypes{DType::kBF16, DType::kBF16},
                                           DTypes{DType::kBF16, DType::kF32}),
                         [](const auto& info) {
                           return absl::StrCat(DTypeName(info.param.ab), "_",
                                               DTypeName(info.param.d));
                         });

TEST(GroupedGemmCheckTest, RejectsBadArguments) {
  std::vector<float> a(64, 1.0f), b(64, 1.0f), d(64);
  std::vector<int32_t> offsets{0, 2, 4};
  const GroupedGemmParams good{.a = a.data(),
                               .b = b.data(),
                               .d = d.data(),
                               .offsets = offsets.data(),
                               .groups = 2,
                               .rows = 4,
                               .n = 2,
                               .k = 2};
  ASSERT_TRUE(GroupedGemmCpu(good).ok());
  GroupedGemmParams p = good;
  p.groups = 0;
  EXPECT_THAT(GroupedGemmCpu(p).message(), HasSubstr("groups 0"));
  p = good;
  p.m = 3;
  EXPECT_THAT(GroupedGemmCpu(p).message(), HasSubstr("m is kVariableDepth's"));
  p = good;
  p.mode = GroupedGemmMode::kVariableDepth;
  EXPECT_THAT(GroupedGemmCpu(p).message(), HasSubstr("neither k"));
  p = good;
  p.offsets = nullptr;
  EXPECT_THAT(GroupedGemmCpu(p).message(), HasSubstr("offsets"));
  p = good;
  p.d_dtype = DType::kBF16;
  EXPECT_THAT(GroupedGemmCpu(p).message(), HasSubstr("d dtype"));
  // row_multiple: a promise about the offsets (2 holds here, 4 does not), kVariableRows only.
  p = good;
  p.row_multiple = 2;
  EXPECT_TRUE(GroupedGemmCpu(p).ok());
  p.row_multiple = 4;
  EXPECT_THAT(GroupedGemmCpu(p).message(), HasSubstr("not a multiple of row_multiple 4"));
  p.row_multiple = 0;
  EXPECT_THAT(GroupedGemmCpu(p).message(), HasSubstr("row_multiple 0 is not in [1, "));
  p = good;
  p.mode = GroupedGemmMode::kVariableDepth;
  p.k = 0;
  p.m = 2;
  p.row_multiple = 2;
  EXPECT_THAT(GroupedGemmCpu(p).message(), HasSubstr("row_multiple"));
  for (const std::vector<int32_t>& bad : {std::vector<int32_t>{0, 3, 2}, {0, 2, 5}, {-1, 2, 4}}) {
    offsets = bad;
    const absl::Status s = GroupedGemmCpu(good);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << bad[0] << bad[1] << bad[2];
    EXPECT_THAT(s.message(), HasSubstr("offsets["));
  }
}

}  // namespace
}  // namespace mimo::kernels
