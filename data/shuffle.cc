// ShuffledPosition: a 6-round balanced Feistel network keyed by (seed, epoch), cycle-walked.
#include "data/shuffle.h"

#include <bit>

#include "common/philox.h"

namespace mimo::data {
namespace {

constexpr int kRounds = 6;

}  // namespace

int64_t ShuffledPosition(int64_t position, int64_t n, uint64_t seed, uint64_t epoch) {
  if (n <= 1) return 0;
  const int bits = std::bit_width(static_cast<uint64_t>(n - 1));
  const int half = (bits + 1) / 2;  // Bits of each half; 1..32.
  const uint64_t mask = (uint64_t{1} << half) - 1;
  const PhiloxKey key{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)};
  uint64_t x = static_cast<uint64_t>(position);
  do {
    uint64_t left = x >> half, right = x & mask;
    for (int round = 0; round < kRounds; ++round) {
      const PhiloxCounter ctr{static_cast<uint32_t>(right), static_cast<uint32_t>(round),
                              static_cast<uint32_t>(epoch), static_cast<uint32_t>(epoch >> 32)};
      const uint64_t f = Philox4x32(ctr, key)[0] & mask;
      const uint64_t next = left ^ f;
      left = right;
      right = next;
    }
    x = (left << half) | right;
  } while (x >= static_cast<uint64_t>(n));
  return static_cast<int64_t>(x);
}

}  // namespace mimo::data
