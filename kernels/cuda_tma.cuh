// PTX wrappers for Hopper's tensor memory accelerator (TMA) and the shared-memory barriers
// (mbarrier) it completes: barrier init / arrive / expect-tx / parity wait, a 2-D tiled tensor
// load into shared memory, and the per-warpgroup register reallocation (setmaxnreg) that lets a
// producer warpgroup give its registers to the consumers. sm_90a only, as kernels/cuda_wgmma.cuh.
#pragma once

#include <cuda.h>

#include <cstdint>

#include "kernels/cuda_wgmma.cuh"

namespace mimo::kernels {

// Initializes the barrier at shared address `bar` to expect `count` arrivals a phase.
__device__ __forceinline__ void MbarInit(uint32_t bar, uint32_t count) {
  MIMO_SM90A(asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count)
                          : "memory"));
}

// Makes barrier initializations visible to the async proxy (the TMA unit); a block barrier must
// follow before any thread uses them.
__device__ __forceinline__ void FenceMbarInit() {
  MIMO_SM90A(asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory"));
}

// Arrives once on `bar`.
__device__ __forceinline__ void MbarArrive(uint32_t bar) {
  MIMO_SM90A(asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory"));
}

// Arrives once on `bar` and adds `bytes` to the transfers its phase waits for.
__device__ __forceinline__ void MbarArriveExpectTx(uint32_t bar, uint32_t bytes) {
  MIMO_SM90A(
      asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes)
                   : "memory"));
}

// Waits until the phase of `bar` with parity `parity` has completed.
__device__ __forceinline__ void MbarWait(uint32_t bar, uint32_t parity) {
  MIMO_SM90A(uint32_t done = 0; while (!done) {
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
        "selp.u32 %0, 1, 0, p;\n"
        "}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
  });
}

// Loads the box of `map` at element coordinates (x, y) (x the inner dimension) into shared
// address `dst`, completing `bytes` of `bar`'s transaction count. Parts of the box outside the
// tensor are filled with zeros (and still counted).
__device__ __forceinline__ void TmaLoad2d(uint32_t dst, const CUtensorMap* map, int x, int y,
                                          uint32_t bar) {
  MIMO_SM90A(
      asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes"
                   " [%0], [%1, {%3, %4}], [%2];\n" ::"r"(dst),
                   "l"(reinterpret_cast<uint64_t>(map)), "r"(bar), "r"(x), "r"(y)
                   : "memory"));
}

// Lowers (Dec) or raises (Inc) this warpgroup's registers per thread to N; every thread of the
// warpgroup executes it, and the block's total must stay within the multiprocessor's.
template <int N>
__device__ __forceinline__ void SetMaxRegistersDec() {
  MIMO_SM90A(asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N)));
}
template <int N>
__device__ __forceinline__ void SetMaxRegistersInc() {
  MIMO_SM90A(asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N)));
}

// Waits at named barrier `id` (1-15; 0 is __syncthreads') for `threads` threads (a multiple of 32).
__device__ __forceinline__ void NamedBarrier(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

}  // namespace mimo::kernels
