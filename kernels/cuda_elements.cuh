// Reading and writing bf16/f32 elements as fp32 in CUDA kernels.
#pragma once

#include <cuda_bf16.h>

namespace mimo::kernels {

__device__ __forceinline__ float ToFloat(float v) { return v; }
__device__ __forceinline__ float ToFloat(__nv_bfloat16 v) { return __bfloat162float(v); }
// Stores `v` at `p`, rounding to nearest even for bf16.
__device__ __forceinline__ void Put(float* p, float v) { *p = v; }
__device__ __forceinline__ void Put(__nv_bfloat16* p, float v) { *p = __float2bfloat16(v); }

}  // namespace mimo::kernels
