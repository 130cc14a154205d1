// RoPE's CPU twin against float64 (f32 relative error < 2e-6, bf16 < 1e-2) on packed sequences
// with restarting positions and on positions up to 131071, partial rotary dims passing through,
// in-place use, the backward as the exact transpose of the forward and against central
// differences, and argument errors.
#include "kernels/rope.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "tests/kernels/op_test_util.h"
#include "tests/kernels/rope_reference.h"

namespace mimo::kernels {
namespace {

using ::testing::HasSubstr;
using namespace ::mimo::kernels::testing;  // NOLINT: test helpers.

struct Case {
  std::vector<int32_t> positions;
  int64_t heads, head_dim, rotary_dim;
};

std::vector<Case> Cases() {
  return {{PackedPositions({1}), 1, 2, 2},
          {PackedPositions({5, 1, 9}), 3, 10, 6},  // Three packed sequences; partial rotary.
          {PackedPositions({33, 64}), 4, 64, 64},
          {{0, 1, 4095, 65536, 131071}, 2, 128, 128}};
}

class RopeCpuTest : public ::testing::TestWithParam<DType> {};

TEST_P(RopeCpuTest, MatchesFloat64BothWaysAndInPlace) {
  const DType dtype = GetParam();
  const double bound = dtype == DType::kF32 ? 2e-6 : 1e-2;
  std::mt19937 random(std::random_device{}());
  for (const Case& c : Cases()) {
    const int64_t tokens = static_cast<int64_t>(c.positions.size());
    SCOPED_TRACE(::testing::Message() << DTypeName(dtype) << " tokens " << tokens << " heads "
                                      << c.heads << " head_dim " << c.head_dim);
    const int64_t n = tokens * c.heads * c.head_dim;
    for (bool backward : {false, true}) {
      HostData x = RandomData(dtype, n, random, -2, 2);
      HostData y = PoisonedData(dtype, n);
      RopeParams p{.dtype = dtype,
                   .x = x.data(),
                   .y = y.data(),
                   .positions = c.positions.data(),
                   .tokens = tokens,
                   .heads = c.heads,
                   .head_dim = c.head_dim,
                   .rotary_dim = c.rotary_dim,
                   .backward = backward};
      ASSERT_TRUE(RopeCpu(p).ok());
      const std::vector<double> want =
          RopeFloat64(x.exact, c.positions, c.heads, c.head_dim, c.rotary_dim, 10000.0, backward);
      const std::vector<double> got = ValuesOf(dtype, y.bytes);
      ASSERT_TRUE(AllFinite(got)) << "an output element was not written";
      EXPECT_LT(RelativeError(got, want), bound);
      // In place gives the same bytes.
      p.y = x.data();
      ASSERT_TRUE(RopeCpu(p).ok());
      EXPECT_EQ(x.bytes, y.bytes);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(DTypes, RopeCpuTest, ::testing::Values(DType::kF32, DType::kBF16),
                         [](const auto& info) { return std::string(DTypeName(info.param)); });

// The backward is the gradient of the forward: <forward(x), u> == <x, backward(u)> for every x
// and u (a rotation's transpose), to fp32 rounding.
TEST(RopeCpuGradientTest, BackwardIsTheTransposeOfTheForward) {
  std::mt19937 random(21);
  const std::vector<int32_t> positions = PackedPositions({7, 3});
  const int64_t tokens = 10, heads = 2, head_dim = 12, rotary_dim = 8,
                n = tokens * heads * head_dim;
  const HostData x = RandomData(DType::kF32, n, random, -1, 1);
  const HostData u = RandomData(DType::kF32, n, random, -1, 1);
  std::vector<float> fx(n), bu(n);
  ASSERT_TRUE(RopeCpu({.x = x.data(),
                       .y = fx.data(),
                       .positions = positions.data(),
                       .tokens = tokens,
                       .heads = heads,
                       .head_dim = head_dim,
                       .rotary_dim = rotary_dim})
                  .ok());
  ASSERT_TRUE(RopeCpu({.x = u.data(),
                       .y = bu.data(),
                       .positions = positions.data(),
                       .tokens = tokens,
                       .heads = heads,
                       .head_dim = head_dim,
                       .rotary_dim = rotary_dim,
                       .backward = true})
                  .ok());
  double left = 0, right = 0;
  for (int64_t i = 0; i < n; ++i) {
    left += fx[i] * u.exact[i];
    right += x.exact[i] * bu[i];
  }
  EXPECT_NEAR(left, right, 1e-5 * n);
}

// L(x) = sum(y * u): the backward with dy = u must equal central differences of L, pass-through
// elements (rotary_dim < head_dim) included.
TEST(RopeCpuGradientTest, BackwardMatchesCentralDifferences) {
  std::mt19937 random(23);
  const std::vector<int32_t> positions = PackedPositions({3, 2});
  const int64_t tokens = 5, heads = 2, head_dim = 6, rotary_dim = 4, n = tokens * heads * head_dim;
  const HostData x = RandomData(DType::kF32, n, random, -1, 1);
  const HostData u = RandomData(DType::kF32, n, random, -1, 1);
  const RopeParams shape{.positions = positions.data(),
                         .tokens = tokens,
                         .heads = heads,
                         .head_dim = head_dim,
                         .rotary_dim = rotary_dim};
  auto forward = [&](const std::vector<float>& at) {
    std::vector<float> y(n);
    RopeParams p = shape;
    p.x = at.data();
    p.y = y.data();
    EXPECT_TRUE(RopeCpu(p).ok());
    return y;
  };
  std::vector<float> dx(n, std::nanf(""));
  RopeParams back = shape;
  back.x = u.data();
  back.y = dx.data();
  back.backward = true;
  ASSERT_TRUE(RopeCpu(back).ok());
  ExpectCentralDifferences(x, u, dx, forward);
}

TEST(RopeCpuTest, BadArgumentsAreNamed) {
  float buf[8] = {};
  const int32_t pos[1] = {-1};
  const RopeParams good{.x = buf,
                        .y = buf,
                        .positions = pos,
                        .tokens = 1,
                        .heads = 1,
                        .head_dim = 8,
                        .rotary_dim = 8};
  RopeParams p = good;
  EXPECT_THAT(RopeCpu(p).message(), HasSubstr("token 0 has negative position -1"));
  p.rotary_dim = 3;
  EXPECT_THAT(RopeCpu(p).message(), HasSubstr("rotary_dim must be even and in [2, head_dim = 8]"));
  p = good;
  p.base = 0;
  EXPECT_THAT(RopeCpu(p).message(), HasSubstr("base must be positive"));
  p = good;
  p.positions = nullptr;
  EXPECT_THAT(RopeCpu(p).message(), HasSubstr("positions is null"));
  p = good;
  p.dtype = DType::kI32;
  EXPECT_THAT(RopeCpu(p).message(), HasSubstr("dtype i32 is not supported"));
}

}  // namespace
}  // namespace mimo::kernels
