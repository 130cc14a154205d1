// The per-epoch shuffle of a dataset: a keyed pseudo-random permutation of [0, n) computed one
// position at a time (no table, no state), identical on every rank and in every process.
#pragma once

#include <cstdint>

namespace mimo::data {

// The sample at `position` (in [0, n), n >= 1) of epoch `epoch`'s order: a bijection of [0, n)
// for each (seed, epoch), different across epochs and seeds. A Feistel network over the smallest
// even number of bits that holds n - 1, Philox4x32 as its round function, cycle-walking back
// into [0, n) (fewer than 4 steps on average); O(1) time and memory per call.
int64_t ShuffledPosition(int64_t position, int64_t n, uint64_t seed, uint64_t epoch);

}  // namespace mimo::data
