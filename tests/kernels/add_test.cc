// The elementwise sum's CPU twin against float64 on odd sizes (one rounding: f32 relative error
// < 1e-7, bf16 < 4e-3), in place, and argument errors.
#include "kernels/add.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "tests/kernels/op_test_util.h"

namespace mimo::kernels {
namespace {

using ::testing::HasSubstr;
using namespace ::mimo::kernels::testing;  // NOLINT: test helpers.

class AddCpuTest : public ::testing::TestWithParam<DType> {};

TEST_P(AddCpuTest, MatchesFloat64AndWorksInPlace) {
  const DType dtype = GetParam();
  const double bound = dtype == DType::kF32 ? 1e-7 : 4e-3;
  std::mt19937 random(std::random_device{}());
  for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{1001}, int64_t{65537}}) {
    SCOPED_TRACE(::testing::Message() << DTypeName(dtype) << " n " << n);
    HostData a = RandomData(dtype, n, random, -4, 4);
    const HostData b = RandomData(dtype, n, random, -4, 4);
    HostData out = PoisonedData(dtype, n);
    ASSERT_TRUE(
        AddCpu({.dtype = dtype, .a = a.data(), .b = b.data(), .out = out.data(), .n = n}).ok());
    std::vector<double> want(n);
    for (int64_t i = 0; i < n; ++i) want[i] = a.exact[i] + b.exact[i];
    const std::vector<double> got = ValuesOf(dtype, out.bytes);
    ASSERT_TRUE(AllFinite(got));
    EXPECT_LT(RelativeError(got, want), bound);
    ASSERT_TRUE(
        AddCpu({.dtype = dtype, .a = a.data(), .b = b.data(), .out = a.data(), .n = n}).ok());
    EXPECT_EQ(a.bytes, out.bytes);  // In place.
  }
}

INSTANTIATE_TEST_SUITE_P(DTypes, AddCpuTest, ::testing::Values(DType::kF32, DType::kBF16),
                         [](const auto& info) { return std::string(DTypeName(info.param)); });

TEST(AddCpuTest, Int32CountsAddExactlyAndWrapAround) {
  const std::vector<int32_t> a = {0, 5, -7, 2147483647, 1 << 30};
  const std::vector<int32_t> b = {3, 11, 7, 1, 1 << 30};
  std::vector<int32_t> out(a.size(), -1);
  ASSERT_TRUE(AddCpu({.dtype = DType::kI32,
                      .a = a.data(),
                      .b = b.data(),
                      .out = out.data(),
                      .n = static_cast<int64_t>(a.size())})
                  .ok());
  EXPECT_EQ(out, (std::vector<int32_t>{3, 16, 0, -2147483647 - 1, -2147483647 - 1}));
}

TEST(AddCpuTest, BadArgumentsAreNamed) {
  EXPECT_THAT(AddCpu({.dtype = DType::kI64, .n = 1}).message(), HasSubstr("dtype i64"));
  EXPECT_THAT(AddCpu({.n = -2}).message(), HasSubstr("bad shape"));
  float x = 0;
  EXPECT_THAT(AddCpu({.a = &x, .out = &x, .n = 1}).message(), HasSubstr("b is null"));
  EXPECT_TRUE(AddCpu({.n = 0}).ok());
}

}  // namespace
}  // namespace mimo::kernels
