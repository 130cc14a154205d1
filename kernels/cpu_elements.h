// Reading and writing bf16/f32 elements as fp32 on the host: the CPU twins' storage access.
#pragma once

#include <cstdint>

#include "common/bfloat16.h"
#include "kernels/dtype.h"

namespace mimo::kernels {

// Element `i` of `base` (bf16 or f32) as a float.
inline float LoadElement(DType dtype, const void* base, int64_t i) {
  return dtype == DType::kF32 ? static_cast<const float*>(base)[i]
                              : BFloat16ToFloat(static_cast<const uint16_t*>(base)[i]);
}

// Stores `v` as element `i` of `base`, rounding to nearest even for bf16.
inline void StoreElement(DType dtype, void* base, int64_t i, float v) {
  if (dtype == DType::kF32) {
    static_cast<float*>(base)[i] = v;
  } else {
    static_cast<uint16_t*>(base)[i] = FloatToBFloat16(v);
  }
}

}  // namespace mimo::kernels
