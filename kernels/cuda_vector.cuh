// 16-byte vector access to bf16/f32 elements in CUDA kernels: 8 bf16 or 4 f32 per load or store.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

namespace mimo::kernels {

// Elements of T in one 16-byte vector.
template <typename T>
inline constexpr int kVecWidth = 16 / static_cast<int>(sizeof(T));

// Whether `p` may be accessed as 16-byte vectors.
inline bool VecAligned(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// A raw 16-byte vector as 4 f32 or 8 bf16 values (by the size of the destination).
__device__ __forceinline__ void Unpack(const uint4& q, float (&v)[4]) {
  v[0] = __uint_as_float(q.x);
  v[1] = __uint_as_float(q.y);
  v[2] = __uint_as_float(q.z);
  v[3] = __uint_as_float(q.w);
}
__device__ __forceinline__ void Unpack(const uint4& q, float (&v)[8]) {
  const uint32_t w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    v[2 * i] = __uint_as_float(w[i] << 16);
    v[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
  }
}

// Loads the 16-byte vector at `p` (16-byte aligned) as fp32.
template <typename T>
__device__ __forceinline__ void LoadVec(const T* p, float (&v)[kVecWidth<T>]) {
  Unpack(*reinterpret_cast<const uint4*>(p), v);
}

// Stores `v` as the 16-byte vector at `p` (16-byte aligned), rounding to nearest even for bf16.
__device__ __forceinline__ void StoreVec(float* p, const float (&v)[4]) {
  *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
}
__device__ __forceinline__ void StoreVec(__nv_bfloat16* p, const float (&v)[8]) {
  uint32_t w[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(v[2 * i], v[2 * i + 1]);
    w[i] = *reinterpret_cast<const uint32_t*>(&h);
  }
  *reinterpret_cast<uint4*>(p) = make_uint4(w[0], w[1], w[2], w[3]);
}

}  // namespace mimo::kernels
