// RoPE's CUDA kernel against float64 (f32 relative error < 2e-6, bf16 < 1e-2) on packed sequences
// and positions up to 131071, both directions, partial rotary dims, in place, and argument errors.
// Skips without a GPU.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "kernels/rope.h"
#include "tests/kernels/cuda_test_util.h"
#include "tests/kernels/op_test_util.h"
#include "tests/kernels/rope_reference.h"

namespace mimo::kernels {
namespace {

using ::testing::HasSubstr;
using namespace ::mimo::kernels::testing;  // NOLINT: test helpers.

class RopeCudaTest : public CudaOpTest {};

TEST_P(RopeCudaTest, MatchesFloat64BothWaysAndInPlace) {
  const DType dtype = GetParam();
  const double bound = dtype == DType::kF32 ? 2e-6 : 1e-2;
  std::mt19937 random(std::random_device{}());
  struct Case {
    std::vector<int32_t> positions;
    int64_t heads, head_dim, rotary_dim;
  };
  const std::vector<Case> cases = {{PackedPositions({1}), 1, 2, 2},
                                   {PackedPositions({5, 1, 9}), 3, 10, 6},
                                   {{0, 1, 4095, 65536, 131071}, 2, 128, 128},
                                   {PackedPositions({1000, 3000, 95}), 8, 128, 64},
                                   // Heads split into groups whose last one is short (bf16: 17
                                   // of 2 heads and 1 of 1; f32: 8 of 4 and 1 of 3); then one
                                   // head a thread.
                                   {PackedPositions({2500, 2500}), 35, 128, 96},
                                   {PackedPositions({300}), 12, 64, 64}};
  for (const Case& c : cases) {
    const int64_t tokens = static_cast<int64_t>(c.positions.size());
    SCOPED_TRACE(::testing::Message() << DTypeName(dtype) << " tokens " << tokens);
    const int64_t n = tokens * c.heads * c.head_dim;
    const DeviceBuffer positions(BytesOf(c.positions.data(), tokens * sizeof(int32_t)));
    for (bool backward : {false, true}) {
      const HostData x = RandomData(dtype, n, random, -2, 2);
      const DeviceBuffer dx(x.bytes), dy(n * DTypeSize(dtype));
      RopeParams p{.dtype = dtype,
                   .x = dx.get(),
                   .y = dy.get(),
                   .positions = positions.as<int32_t>(),
                   .tokens = tokens,
                   .heads = c.heads,
                   .head_dim = c.head_dim,
                   .rotary_dim = c.rotary_dim,
                   .backward = backward};
      ASSERT_TRUE(LaunchRope(p, nullptr).ok());
      const std::vector<double> got = ValuesOf(dtype, dy.Bytes());
      ASSERT_TRUE(AllFinite(got)) << "an output element was not written";
      EXPECT_LT(RelativeError(got, RopeFloat64(x.exact, c.positions, c.heads, c.head_dim,
                                               c.rotary_dim, 10000.0, backward)),
                bound);
      p.y = dx.get();  // In place.
      ASSERT_TRUE(LaunchRope(p, nullptr).ok());
      EXPECT_EQ(dx.Bytes(), dy.Bytes());
    }
  }
}

INSTANTIATE_TEST_SUITE_P(DTypes, RopeCudaTest, ::testing::Values(DType::kF32, DType::kBF16),
                         [](const auto& info) { return std::string(DTypeName(info.param)); });

TEST_F(RopeCudaTest, BadArgumentsFailBeforeLaunching) {
  EXPECT_THAT(
      LaunchRope({.tokens = 1, .heads = 1, .head_dim = 4, .rotary_dim = 6}, nullptr).message(),
      HasSubstr("rotary_dim must be even"));
  EXPECT_THAT(
      LaunchRope({.tokens = 1, .heads = 1, .head_dim = 4, .rotary_dim = 4}, nullptr).message(),
      HasSubstr("x is null"));
  EXPECT_TRUE(LaunchRope({.tokens = 0, .heads = 1, .head_dim = 4, .rotary_dim = 4}, nullptr).ok());
}

}  // namespace
}  // namespace mimo::kernels
