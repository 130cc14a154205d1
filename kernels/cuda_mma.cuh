// PTX wrappers the tensor-core kernels share: asynchronous copies from global to shared memory,
// shared-memory matrix loads (ldmatrix) and the bf16 m16n8k16 MMA with fp32 accumulators.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>
#include <cstring>

namespace mimo::kernels {

// cp.async and the bf16 MMA need sm_80: older targets compile them as traps, and the launchers
// refuse bf16 on such devices.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#define MIMO_SM80(...) __trap()
#else
#define MIMO_SM80(...) __VA_ARGS__
#endif

__device__ __forceinline__ uint32_t SmemAddr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes from global to shared memory; zeros (and no read) when !valid.
__device__ __forceinline__ void CpAsync16(uint32_t dst, const void* src, bool valid) {
  MIMO_SM80(asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
                         "r"(valid ? 16 : 0)));
}

__device__ __forceinline__ void CpAsync4(uint32_t dst, const void* src, bool valid) {
  MIMO_SM80(asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src),
                         "r"(valid ? 4 : 0)));
}

__device__ __forceinline__ void CpAsyncCommit() {
  MIMO_SM80(asm volatile("cp.async.commit_group;\n" ::));
}

// Waits until at most N of this thread's committed copy groups are still in flight.
template <int N>
__device__ __forceinline__ void CpAsyncWait() {
  MIMO_SM80(asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"));
}

// Four 8x8 b16 matrices; lane i gives the address of row i % 8 of matrix i / 8.
__device__ __forceinline__ void LdMatrix(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

__device__ __forceinline__ void LdMatrixTrans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// c += a b for a 16x16 bf16 tile a (row major), a 16x8 tile b (column major) and fp32 c. With
// g = lane / 4 and t = lane % 4: a holds (g, 2t..2t+1), (g+8, 2t..), (g, 2t+8..), (g+8, 2t+8..);
// b holds (k 2t..2t+1, n g), (k 2t+8.., n g); c holds (g, 2t..2t+1), (g+8, 2t..2t+1).
__device__ __forceinline__ void Mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                    uint32_t b1) {
  MIMO_SM80(
      asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
          "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
          : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1)));
}

// Two floats as a bf16 pair, `lo` in the low half (the lower column).
__device__ __forceinline__ uint32_t PackBf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  uint32_t r;
  memcpy(&r, &v, sizeof(r));
  return r;
}

}  // namespace mimo::kernels
