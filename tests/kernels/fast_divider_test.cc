// FastDivider against the / operator: every divisor up to 4096 and powers of two and their
// neighbours up to 2^31 - 1, on the dividends next to multiples of the divisor, the largest
// dividend (2^31 - 1) and fresh random ones.
#include "kernels/fast_divider.h"

#include <gtest/gtest.h>

#include <random>
#include <vector>

namespace mimo::kernels {
namespace {

void ExpectExact(uint32_t d, std::mt19937& random) {
  const FastDivider div(d);
  std::vector<uint32_t> dividends = {0, 1, d - 1, d, d + 1, 0x7fffffffu, 0x7ffffffeu};
  const uint32_t top = 0x7fffffffu / d * d;  // The largest multiple of d below 2^31.
  for (uint32_t n : {top - 1, top, top + 1, top - d, top - d + 1}) dividends.push_back(n);
  std::uniform_int_distribution<uint32_t> any(0, 0x7fffffffu);
  for (int i = 0; i < 200; ++i) {
    const uint32_t n = any(random);
    dividends.insert(dividends.end(), {n, n / d * d, n / d * d - 1});
  }
  for (uint32_t n : dividends) {
    if (n > 0x7fffffffu) continue;  // Below 2^31 only (the wrapped n / d * d - 1 of 0).
    ASSERT_EQ(div(n), n / d) << n << " / " << d;
  }
}

TEST(FastDividerTest, MatchesDivisionForSmallDivisors) {
  std::mt19937 random(std::random_device{}());
  for (uint32_t d = 1; d <= 4096; ++d) ExpectExact(d, random);
}

TEST(FastDividerTest, MatchesDivisionNearPowersOfTwoAndForRandomDivisors) {
  std::mt19937 random(std::random_device{}());
  for (int k = 12; k <= 31; ++k) {
    const uint32_t p = uint32_t{1} << k;
    for (uint32_t d : {p - 1, p, p + 1}) {
      if (d <= 0x7fffffffu) ExpectExact(d, random);
    }
  }
  std::uniform_int_distribution<uint32_t> any(1, 0x7fffffffu);
  for (int i = 0; i < 2000; ++i) ExpectExact(any(random), random);
}

TEST(FastDividerTest, DefaultDividesByOne) {
  const FastDivider one;
  for (uint32_t n : {0u, 1u, 12345u, 0x7fffffffu}) EXPECT_EQ(one(n), n);
}

}  // namespace
}  // namespace mimo::kernels
