// ShuffledPosition: a bijection of [0, n) for every n, deterministic, and different across
// epochs and seeds.
#include "data/shuffle.h"

#include <gtest/gtest.h>

#include <vector>

namespace mimo::data {
namespace {

std::vector<int64_t> Order(int64_t n, uint64_t seed, uint64_t epoch) {
  std::vector<int64_t> order(n);
  for (int64_t i = 0; i < n; ++i) order[i] = ShuffledPosition(i, n, seed, epoch);
  return order;
}

TEST(ShuffleTest, IsAPermutationForEverySize) {
  for (const int64_t n : {1, 2, 3, 5, 16, 17, 255, 256, 257, 1000, 4099}) {
    for (const uint64_t epoch : {0u, 1u, 7u}) {
      std::vector<int> seen(n, 0);
      for (const int64_t p : Order(n, 42, epoch)) {
        ASSERT_GE(p, 0);
        ASSERT_LT(p, n);
        ++seen[p];
      }
      EXPECT_EQ(seen, std::vector<int>(n, 1)) << "n " << n << " epoch " << epoch;
    }
  }
}

TEST(ShuffleTest, DeterministicAndKeyedBySeedAndEpoch) {
  EXPECT_EQ(Order(1000, 1, 0), Order(1000, 1, 0));
  EXPECT_NE(Order(1000, 1, 0), Order(1000, 1, 1));
  EXPECT_NE(Order(1000, 1, 0), Order(1000, 2, 0));
  // Shuffled, not the identity or a rotation: few fixed points, neighbours scattered.
  const std::vector<int64_t> order = Order(1000, 1, 0);
  int fixed = 0, adjacent = 0;
  for (int64_t i = 0; i < 1000; ++i) {
    fixed += order[i] == i;
    if (i > 0) adjacent += std::abs(order[i] - order[i - 1]) == 1;
  }
  EXPECT_LT(fixed, 10);
  EXPECT_LT(adjacent, 20);
  // Large sizes work without tables.
  const int64_t big = int64_t{1} << 40;
  EXPECT_LT(ShuffledPosition(big - 1, big, 3, 4), big);
}

}  // namespace
}  // namespace mimo::data
