// Cast's CPU twin: fp32 -> bf16 rounds to nearest even (ties, the largest finite values,
// infinities, NaN), bf16 -> fp32 is exact, equal dtypes copy; argument checks.
#include "kernels/cast.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "common/bfloat16.h"

namespace mimo::kernels {
namespace {

float FromBits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

TEST(CastCpuTest, RoundsToNearestEvenAndBack) {
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<float> x = {0.0f,
                                -0.0f,
                                1.0f,
                                FromBits(0x3f808000u),  // 1 + 2^-8: a tie, rounds down to even.
                                FromBits(0x3f818000u),  // A tie that rounds up to even.
                                FromBits(0x3f808001u),  // Just above a tie: rounds up.
                                3.0e38f,  // Near the top: stays finite or inf as RNE says.
                                FromBits(0x7f7fffffu),  // Largest float: rounds to inf.
                                inf,
                                -inf,
                                1e-40f};  // A subnormal.
  std::vector<uint16_t> y(x.size());
  ASSERT_TRUE(CastCpu({.from = DType::kF32,
                       .to = DType::kBF16,
                       .x = x.data(),
                       .y = y.data(),
                       .n = static_cast<int64_t>(x.size())})
                  .ok());
  const std::vector<uint16_t> want = {0x0000,
                                      0x8000,
                                      0x3f80,
                                      0x3f80,
                                      0x3f82,
                                      0x3f81,
                                      FloatToBFloat16(3.0e38f),
                                      0x7f80,
                                      0x7f80,
                                      0xff80,
                                      FloatToBFloat16(1e-40f)};
  EXPECT_EQ(y, want);
  std::vector<float> back(x.size());
  ASSERT_TRUE(CastCpu({.from = DType::kBF16,
                       .to = DType::kF32,
                       .x = y.data(),
                       .y = back.data(),
                       .n = static_cast<int64_t>(x.size())})
                  .ok());
  for (size_t i = 0; i < x.size(); ++i) EXPECT_EQ(back[i], BFloat16ToFloat(y[i])) << i;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  uint16_t nan_bits = 0;
  ASSERT_TRUE(
      CastCpu({.from = DType::kF32, .to = DType::kBF16, .x = &nan, .y = &nan_bits, .n = 1}).ok());
  EXPECT_TRUE(std::isnan(BFloat16ToFloat(nan_bits)));
}

TEST(CastCpuTest, EqualDtypesCopy) {
  const std::vector<float> x = {1.5f, -2.25f, 3.0f};
  std::vector<float> y(3, 0.0f);
  ASSERT_TRUE(
      CastCpu({.from = DType::kF32, .to = DType::kF32, .x = x.data(), .y = y.data(), .n = 3}).ok());
  EXPECT_EQ(y, x);
}

TEST(CastCpuTest, RejectsBadArguments) {
  float x = 1, y = 0;
  EXPECT_EQ(CastCpu({.from = DType::kI32, .to = DType::kF32, .x = &x, .y = &y, .n = 1}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CastCpu({.from = DType::kF32, .to = DType::kBF16, .x = &x, .y = &y, .n = -1}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      CastCpu({.from = DType::kF32, .to = DType::kBF16, .x = nullptr, .y = &y, .n = 1}).code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(CastCpu({.from = DType::kF32, .to = DType::kBF16, .n = 0}).ok());
}

}  // namespace
}  // namespace mimo::kernels
