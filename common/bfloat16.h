// bfloat16 <-> float conversion on the host, for reductions and checks over bfloat16 buffers.
#pragma once

#include <cstdint>
#include <cstring>

namespace mimo {

// The upper half of a float32: same exponent range, 8 significant bits.
inline float BFloat16ToFloat(uint16_t bits) {
  const uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// Rounds to nearest, ties to even (as CUDA's __float2bfloat16 does); NaN stays a quiet NaN.
inline uint16_t FloatToBFloat16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

}  // namespace mimo
