// Division of 32-bit indices by a divisor fixed at launch, by a multiply and a shift.
#pragma once

#include <cstdint>

#include "common/philox.h"  // MIMO_HOST_DEVICE

namespace mimo::kernels {

// n / d for n < 2^31 as (n * m) >> s, with s = 31 + ceil(log2(d)) and m = ceil(2^s / d) (< 2^32).
// Exact: n * m / 2^s exceeds n / d by n * (m * d - 2^s) / (d * 2^s) < n / 2^s < 1 / d (as
// m * d - 2^s < d and 2^s >= 2^31 * d), and n / d is at least 1 / d below the next integer.
// Kernels use it to find an element's row (a 64-bit division takes tens of instructions). Built
// on the host, passed to kernels by value.
struct FastDivider {
  uint32_t multiplier = uint32_t{1} << 31;  // Defaults: the divisor 1.
  uint32_t shift = 31;

  FastDivider() = default;
  // d >= 1.
  explicit FastDivider(uint32_t d) {
    uint32_t log2_ceil = 0;
    while ((uint64_t{1} << log2_ceil) < d) ++log2_ceil;
    shift = 31 + log2_ceil;
    multiplier = static_cast<uint32_t>(((uint64_t{1} << shift) + d - 1) / d);
  }

  // n / d, for n < 2^31.
  MIMO_HOST_DEVICE uint32_t operator()(uint32_t n) const {
    return static_cast<uint32_t>((static_cast<uint64_t>(n) * multiplier) >> shift);
  }
};

}  // namespace mimo::kernels
