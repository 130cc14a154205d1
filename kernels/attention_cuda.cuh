// Attention's CUDA kernels, the parts the forward and the backward share: launch arguments, tile
// constants, PTX wrappers (cp.async, ldmatrix, the bf16 tensor-core MMA), tile loads and stores,
// and the host-side checks. The design is in attention_forward.cu and attention_backward.cu.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <type_traits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/attention.h"
#include "kernels/cuda_elements.cuh"
#include "kernels/cuda_launch.h"
#include "kernels/cuda_mma.cuh"
#include "kernels/cuda_status.h"

namespace mimo::kernels::attention_internal {

using bf16 = __nv_bfloat16;

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr int kMaxHeadDim = 256;
// The smallest query tile of any kernel here: bounds the grid's second dimension.
constexpr int kMinBlockM = 32;

struct FwdArgs {
  const void* q;
  const void* k;
  const void* v;
  void* out;
  float* lse;
  const int32_t* cu_seqlens;
  int total, heads, kv_heads, group, head_dim;
  float scale;
};

struct BwdArgs {
  const void* q;
  const void* k;
  const void* v;
  const void* dout;
  void* dk;
  void* dv;
  const float* lse;
  const float* row_sums;  // D = rowsum(dout * out), (heads, total).
  float* dq_accum;        // (total, heads, head_dim), zeroed, unscaled.
  // Deterministic mode: (total, heads) turns, zeroed; the entry of a query tile's first row and
  // head counts the key tiles that have added their dQ to it. Null: dQ is added with atomics.
  int* dq_turns;
  const int32_t* cu_seqlens;
  int total, heads, kv_heads, group, head_dim;
  float scale;
};

// The fragments of two adjacent 16x8 fp32 tiles (columns 16j .. 16j + 15) as one 16x16 bf16 A
// fragment: accumulators feed the next product without shared memory.
__device__ __forceinline__ void AccumulatorsToA(uint32_t (&a)[4], const float (&c0)[4],
                                                const float (&c1)[4]) {
  a[0] = PackBf16(c0[0], c0[1]);
  a[1] = PackBf16(c0[2], c0[3]);
  a[2] = PackBf16(c1[0], c1[1]);
  a[3] = PackBf16(c1[2], c1[3]);
}

__device__ __forceinline__ void AtomicAdd2(float* p, float x, float y) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  atomicAdd(reinterpret_cast<float2*>(p), make_float2(x, y));
#else
  atomicAdd(p, x);
  atomicAdd(p + 1, y);
#endif
}

// Deterministic dQ: the blocks of one (kv head, sequence) add to a query tile in key-tile order,
// block y once blocks 0..y-1 have (the key tiles that reach a query tile are always 0..Y, and each
// block takes its query tiles in increasing order, so a block only ever waits for lower ones;
// that they run relies on the grid dispatching blocks in increasing linear index, as CUB's
// decoupled look-back and CUTLASS's semaphores do). Every thread of the block calls both; `turn`
// is the tile's counter in BwdArgs::dq_turns. The adds in between go through L2 (AddInTurn), past
// L1 lines that another block may have left stale.
__device__ __forceinline__ void AwaitTurn(int* turn, int mine) {
  if (threadIdx.x == 0) {
    int seen;
    for (;;) {
      asm volatile("ld.acquire.gpu.global.b32 %0, [%1];" : "=r"(seen) : "l"(turn) : "memory");
      if (seen == mine) break;
      __nanosleep(64);
    }
  }
  __syncthreads();
}

__device__ __forceinline__ void PassTurn(int* turn, int next) {
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    asm volatile("st.release.gpu.global.b32 [%0], %1;" : : "l"(turn), "r"(next) : "memory");
  }
}

__device__ __forceinline__ void AddInTurn(float* p, float x) { __stcg(p, __ldcg(p) + x); }

// Copies a tile of kRows rows of kD bf16 (row r at src + r * stride) into shared memory rows of
// kD + 8 (the padding spreads ldmatrix rows over the banks), zero-filling rows >= valid_rows and
// columns >= head_dim (head_dim a multiple of 8). `any` is a readable address for skipped copies.
template <int kRows, int kD, int kThreads>
__device__ __forceinline__ void LoadTile(bf16* dst, const bf16* src, int64_t stride, int valid_rows,
                                         int head_dim, const void* any) {
  constexpr int kChunks = kD / 8, kTotal = kRows * kChunks;
#pragma unroll
  for (int it = 0; it < (kTotal + kThreads - 1) / kThreads; ++it) {
    const int i = it * kThreads + static_cast<int>(threadIdx.x);
    if (kTotal % kThreads == 0 || i < kTotal) {
      const int r = i / kChunks, c = i % kChunks;
      const bool ok = r < valid_rows && c * 8 < head_dim;
      CpAsync16(SmemAddr(dst + r * (kD + 8) + c * 8), ok ? src + r * stride + c * 8 : any, ok);
    }
  }
}

// Copies rows [0, rows) of a staged bf16 tile (row stride kD + 8) to global memory, 16 bytes at
// a time, columns < head_dim; `lane`/`lanes` split the work.
template <int kD>
__device__ __forceinline__ void StoreTile(bf16* dst, int64_t stride, const bf16* src, int rows,
                                          int head_dim, int lane, int lanes) {
  const int chunks = head_dim / 8;
  for (int i = lane; i < rows * chunks; i += lanes) {
    const int r = i / chunks, c = i % chunks;
    *reinterpret_cast<uint4*>(dst + r * stride + c * 8) =
        *reinterpret_cast<const uint4*>(src + r * (kD + 8) + c * 8);
  }
}

// ---------------------------------------------------------------------------------------------
// f32: fp32 FMA kernels for any head_dim up to 256, kFmaTile queries by kFmaTile keys.

constexpr int kFmaTile = 32;
constexpr int kFmaThreads = 256;
constexpr int kFmaWarps = kFmaThreads / 32;
constexpr int kFmaRowsPerWarp = kFmaTile / kFmaWarps;  // 4
constexpr int kFmaDimsPerLane = kMaxHeadDim / 32;      // Output columns per lane (forward).
constexpr int kFmaDimsPerThread = kMaxHeadDim / 8;     // Columns per thread (backward).

// Host side.

inline size_t Align(size_t n) { return (n + 255) / 256 * 256; }

// Opts `kernel` in to `bytes` of dynamic shared memory when that exceeds the default 48 KiB.
template <typename Kernel>
absl::Status AllowSmem(Kernel kernel, size_t bytes) {
  if (bytes > 48 * 1024) {
    MIMO_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(
        kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  }
  return absl::OkStatus();
}

// Host-side checks of what the CUDA kernels need beyond CheckAttention*.
inline absl::Status CheckCudaShape(
    const char* op, int64_t num_seqs, int64_t total_tokens, int64_t heads, int64_t head_dim,
    int64_t max_seqlen, std::initializer_list<std::pair<const void*, const char*>> tensors) {
  if (head_dim % 8 != 0 || head_dim > kMaxHeadDim) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": head_dim ", head_dim,
        " is not supported by the CUDA kernels (multiples of 8 up to 256: 8, 16, ..., 256)"));
  }
  if (total_tokens == 0) return absl::OkStatus();
  if (max_seqlen <= 0 || max_seqlen * num_seqs < total_tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": max_seqlen ", max_seqlen, " is shorter than the mean sequence (",
                     total_tokens, " tokens in ", num_seqs, " sequences)"));
  }
  if ((max_seqlen + kMinBlockM - 1) / kMinBlockM > 65535 || heads * num_seqs > 0x7fffffff) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": the grid of max_seqlen ", max_seqlen,
                                                   ", ", heads, " heads and ", num_seqs,
                                                   " sequences is too large"));
  }
  for (const auto& [ptr, name] : tensors) {
    if (reinterpret_cast<uintptr_t>(ptr) % 16 != 0) {
      return absl::InvalidArgumentError(absl::StrCat(op, ": ", name, " is not 16-byte aligned"));
    }
  }
  return absl::OkStatus();
}

// InvalidArgument for bf16 on a device older than sm_80 (the tensor-core kernels need it).
inline absl::Status CheckBf16Device(const char* op, DType dtype) {
  if (dtype != DType::kBF16) return absl::OkStatus();
  int device = 0, major = 0;
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetDevice(&device));
  MIMO_CUDA_RETURN_IF_ERROR(
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  if (major < 8) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": bf16 needs a device of compute capability 8.0 or newer"));
  }
  return absl::OkStatus();
}

}  // namespace mimo::kernels::attention_internal
