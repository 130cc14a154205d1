// Chunked softmax cross-entropy: the CUDA kernels.
//
// The chunk kernel reads each logit once: every thread folds its logits into an online softmax
// state (running max m and sum of exp(logit - m)), loading 16-byte packs (8 bf16 or 4 f32), kUnroll
// of them in flight, and rescaling its sum once per group of packs. The block then combines the
// threads' states in a fixed tree. Each token row is split over `splits` blocks (1, 2, 4 or 8, so
// that few tokens still fill the device) that form a thread block cluster: the cluster's first
// block combines the blocks' states through distributed shared memory in rank order, then folds
// the result into the token's running state. The backward gives each block one segment of one
// token's row. Rows whose length or buffer do not allow 16-byte packs take the same kernels with
// one-element packs. No atomics anywhere: for a given shape every sum is taken in the same order,
// so results are bitwise reproducible.
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "kernels/cross_entropy.h"
#include "kernels/cuda_block_reduce.cuh"
#include "kernels/cuda_elements.cuh"
#include "kernels/cuda_grid.cuh"
#include "kernels/cuda_launch.h"
#include "kernels/cuda_status.h"
#include "kernels/cuda_vector.cuh"
#include "kernels/op_checks.h"

namespace mimo::kernels {
namespace {

constexpr int kThreads = 256;

__global__ void InitKernel(float* max, float* sum, float* target_logit, int64_t tokens) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < tokens;
       t += stride) {
    max[t] = -INFINITY;
    sum[t] = 0.0f;
    target_logit[t] = 0.0f;
  }
}

// Packs in flight per thread: 4 (64 bytes on the vector path).
constexpr int kUnroll = 4;
// Blocks per token row at most: the portable thread block cluster size.
constexpr int kMaxSplits = 8;

// An online softmax state: the max m of some logits and the sum of exp(logit - m) over them.
struct MaxSum {
  float m, s;
};

// exp(d) for the per-logit terms: ex2 of d * log2(e) takes a few instructions where expf's range
// reduction takes about twice as many, and the chunk kernel issues one per logit it reads. The
// relative error grows with |d| (about 1e-7 per unit of d), so it stays small where the terms are
// not (d near 0).
__device__ __forceinline__ float ExpOfDifference(float d) { return exp2f(d * 1.4426950408889634f); }

__device__ __forceinline__ MaxSum Combine(MaxSum a, MaxSum b) {
  const float m = fmaxf(a.m, b.m);
  if (m == -INFINITY) return {m, 0.0f};  // Nothing but -inf yet (and no -inf - -inf).
  return {m, a.s * expf(a.m - m) + b.s * expf(b.m - m)};
}

// The state of the whole block, in thread 0: a butterfly in each warp, then one over the warps.
__device__ __forceinline__ MaxSum BlockCombine(MaxSum v, MaxSum* scratch) {
  for (int offset = 16; offset > 0; offset /= 2) {
    v = Combine(
        v, {__shfl_xor_sync(0xffffffffu, v.m, offset), __shfl_xor_sync(0xffffffffu, v.s, offset)});
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < kThreads / 32 ? scratch[lane] : MaxSum{-INFINITY, 0.0f};
    for (int offset = 16; offset > 0; offset /= 2) {
      v = Combine(v, {__shfl_xor_sync(0xffffffffu, v.m, offset),
                      __shfl_xor_sync(0xffffffffu, v.s, offset)});
    }
  }
  return v;
}

// The max of kUnroll packs' elements: bf16 pairs compared as pairs (half the instructions, and
// no fp32 copy of the packs kept in registers), other types one by one.
template <typename T, int N>
__device__ __forceinline__ float PackMax(const Pack<T, N> (&v)[kUnroll]) {
  if constexpr (std::is_same_v<T, __nv_bfloat16> && N % 2 == 0) {
    __nv_bfloat162 m = __bfloat162bfloat162(v[0].v[0]);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
      for (int e = 0; e < N; e += 2) m = __hmax2(m, __halves2bfloat162(v[u].v[e], v[u].v[e + 1]));
    }
    return fmaxf(__low2float(m), __high2float(m));
  } else {
    float m = -INFINITY;
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
      for (int e = 0; e < N; ++e) m = fmaxf(m, ToFloat(v[u].v[e]));
    }
    return m;
  }
}

// Block b folds packs [part * packs / splits, (part + 1) * packs / splits) of token b / splits,
// part = b % splits (its rank in its cluster of `splits` blocks).
template <typename T, int N>
__global__ void __launch_bounds__(kThreads)
    ChunkKernel(const T* __restrict__ logits, const int32_t* __restrict__ targets, int64_t chunk,
                int64_t vocab_offset, int splits, float* __restrict__ max_io,
                float* __restrict__ sum_io, float* __restrict__ target_logit) {
  using P = Pack<T, N>;
  __shared__ MaxSum scratch[kThreads / 32];
  const int64_t t = blockIdx.x / splits;
  const int part = static_cast<int>(blockIdx.x % splits);
  const int64_t packs = chunk / N;
  const int64_t begin = packs * part / splits, end = packs * (part + 1) / splits;
  const P* __restrict__ row = reinterpret_cast<const P*>(logits + t * chunk);
  MaxSum acc{-INFINITY, 0.0f};
  for (int64_t first = begin + threadIdx.x; first < end; first += kUnroll * kThreads) {
    P v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (first + u * kThreads < end) {
        v[u] = row[first + u * kThreads];
      } else {
#pragma unroll
        for (int e = 0; e < N; ++e) v[u].v[e] = T(-INFINITY);  // Adds exp(-inf) = 0.
      }
    }
    const float m = PackMax(v);
    if (m > acc.m) {  // Rescale once per group, not per logit.
      acc.s *= expf(acc.m - m);
      acc.m = m;
    }
    if (acc.m == -INFINITY) continue;
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      float s = 0.0f;
#pragma unroll
      for (int e = 0; e < N; ++e) s += ExpOfDifference(ToFloat(v[u].v[e]) - acc.m);
      acc.s += s;
    }
  }
  acc = BlockCombine(acc, scratch);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (splits > 1) {
    // The cluster's blocks hand their states to rank 0 through distributed shared memory; the
    // second sync keeps each block's shared memory alive until rank 0 has read it.
    __shared__ MaxSum mine;
    cooperative_groups::cluster_group cluster = cooperative_groups::this_cluster();
    if (threadIdx.x == 0) mine = acc;
    cluster.sync();
    if (part == 0 && threadIdx.x == 0) {
      acc = *cluster.map_shared_rank(&mine, 0);
      for (int r = 1; r < splits; ++r) acc = Combine(acc, *cluster.map_shared_rank(&mine, r));
    }
    cluster.sync();
  }
#endif
  if (part != 0 || threadIdx.x != 0) return;
  const float old_max = max_io[t];
  const MaxSum folded = Combine({old_max, sum_io[t]}, acc);
  max_io[t] = folded.m;
  sum_io[t] = folded.s;
  const int64_t target = targets[t];
  if (target >= vocab_offset && target < vocab_offset + chunk) {
    target_logit[t] = ToFloat(logits[t * chunk + target - vocab_offset]);
  }
}

__global__ void FinishKernel(const int32_t* __restrict__ targets, const float* __restrict__ max,
                             const float* __restrict__ sum, const float* __restrict__ target_logit,
                             float* __restrict__ loss, float* __restrict__ lse_out,
                             int64_t tokens) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < tokens;
       t += stride) {
    const float lse = logf(sum[t]) + max[t];
    lse_out[t] = lse;
    loss[t] = targets[t] < 0 ? 0.0f : lse - target_logit[t];
  }
}

// Packs in flight per thread in the backward.
constexpr int kBackwardUnroll = 4;

// dlogits for one segment of one token's row per block: block b takes token b / segments and
// `passes` passes of kBackwardUnroll x kThreads packs from packs (b % segments) x span on, so the
// token's target, loss scale and log-sum-exp are read once per block, not once per pack. dlogits
// may alias logits, so neither is __restrict__; each pack is read before the same thread
// overwrites it.
template <typename T, int N>
__global__ void __launch_bounds__(kThreads)
    BackwardKernel(const T* logits, const int32_t* __restrict__ targets,
                   const float* __restrict__ lse, const float* __restrict__ dloss, T* dlogits,
                   int64_t chunk, int64_t vocab_offset, int64_t segments, int passes) {
  using P = Pack<T, N>;
  constexpr int kSpan = kBackwardUnroll * kThreads;
  const int64_t t = blockIdx.x / segments;
  const int64_t packs = chunk / N;
  const int64_t target = targets[t];
  const float scale = target < 0 ? 0.0f : dloss[t];
  const float l = lse[t];
  const int64_t local_target = target - vocab_offset;  // Outside [0, chunk): not in this chunk.
  const P* in = reinterpret_cast<const P*>(logits + t * chunk);
  P* out = reinterpret_cast<P*>(dlogits + t * chunk);
  int64_t first = (blockIdx.x % segments) * passes * int64_t{kSpan} + threadIdx.x;
  for (int pass = 0; pass < passes; ++pass, first += kSpan) {
    P v[kBackwardUnroll];
#pragma unroll
    for (int u = 0; u < kBackwardUnroll; ++u) {
      if (first + u * kThreads < packs) v[u] = in[first + u * kThreads];
    }
#pragma unroll
    for (int u = 0; u < kBackwardUnroll; ++u) {
      const int64_t at = first + u * kThreads;
      if (at >= packs) continue;
      P d;
#pragma unroll
      for (int e = 0; e < N; ++e) {
        const float prob = ExpOfDifference(ToFloat(v[u].v[e]) - l);
        const float onehot = local_target == at * N + e ? 1.0f : 0.0f;
        Put(&d.v[e], scale * (prob - onehot));
      }
      out[at] = d;
    }
  }
}

template <typename T, int N>
cudaError_t Chunk(const CrossEntropyChunkParams& p, cudaStream_t s) {
  // Split rows while the grid would be under 2 resident waves and each block keeps at least one
  // pass of kUnroll packs per thread.
  const int64_t packs = p.chunk / N;
  const int64_t resident = ResidentBlocks<ChunkKernel<T, N>>(kThreads);
  int splits = 1;
  if (ClustersBuilt<ChunkKernel<T, N>>()) {
    while (splits < kMaxSplits && p.tokens * splits < 2 * resident &&
           packs / (2 * splits) >= kUnroll * kThreads && p.tokens * 2 * splits <= 0x7fffffff) {
      splits *= 2;
    }
  }
  const ClusterLaunch launch(dim3(static_cast<unsigned>(p.tokens * splits)), dim3(kThreads), 0, s,
                             static_cast<unsigned>(splits));
  return cudaLaunchKernelEx(&launch.config, ChunkKernel<T, N>, static_cast<const T*>(p.logits),
                            p.targets, p.chunk, p.vocab_offset, splits, p.state.max, p.state.sum,
                            p.state.target_logit);
}

template <typename T>
cudaError_t Chunk(const CrossEntropyChunkParams& p, cudaStream_t s) {
  if (p.chunk % kVecWidth<T> == 0 && VecAligned(p.logits)) return Chunk<T, kVecWidth<T>>(p, s);
  return Chunk<T, 1>(p, s);
}

template <typename T, int N>
void Backward(const CrossEntropyBackwardParams& p, cudaStream_t s) {
  // One pass per block unless the grid would pass CUDA's 2^31 - 1 blocks.
  const int64_t span = int64_t{kBackwardUnroll} * kThreads;
  const int64_t packs = p.chunk / N;
  int passes = 1;
  int64_t segments = (packs + span - 1) / span;
  while (segments > 1 && p.tokens * segments > 0x7fffffff) {
    passes *= 2;
    segments = (packs + span * passes - 1) / (span * passes);
  }
  BackwardKernel<T, N><<<static_cast<unsigned>(p.tokens * segments), kThreads, 0, s>>>(
      static_cast<const T*>(p.logits), p.targets, p.lse, p.dloss, static_cast<T*>(p.dlogits),
      p.chunk, p.vocab_offset, segments, passes);
}

template <typename T>
void Backward(const CrossEntropyBackwardParams& p, cudaStream_t s) {
  if (p.chunk % kVecWidth<T> == 0 && VecAligned(p.logits) && VecAligned(p.dlogits)) {
    Backward<T, kVecWidth<T>>(p, s);
  } else {
    Backward<T, 1>(p, s);
  }
}

}  // namespace

absl::Status LaunchCrossEntropyInit(const CrossEntropyState& s, int64_t tokens,
                                    StreamHandle stream) {
  MIMO_RETURN_IF_ERROR(CheckBuffers(
      "CrossEntropyInit", tokens > 0,
      {{s.max, "state.max"}, {s.sum, "state.sum"}, {s.target_logit, "state.target_logit"}}));
  if (tokens <= 0) return absl::OkStatus();
  InitKernel<<<GridStrideBlocks(tokens), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      s.max, s.sum, s.target_logit, tokens);
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

absl::Status LaunchCrossEntropyChunk(const CrossEntropyChunkParams& p, StreamHandle stream) {
  MIMO_RETURN_IF_ERROR(CheckCrossEntropyChunk(p));
  MIMO_RETURN_IF_ERROR(CheckRowsFitTheGrid("CrossEntropyChunk", p.tokens));
  if (p.tokens == 0 || p.chunk == 0) return absl::OkStatus();
  const auto s = static_cast<cudaStream_t>(stream);
  MIMO_CUDA_RETURN_IF_ERROR(p.dtype == DType::kF32 ? Chunk<float>(p, s)
                                                   : Chunk<__nv_bfloat16>(p, s));
  return absl::OkStatus();
}

absl::Status LaunchCrossEntropyFinish(const CrossEntropyFinishParams& p, StreamHandle stream) {
  MIMO_RETURN_IF_ERROR(CheckBuffers("CrossEntropyFinish", p.tokens > 0,
                                    {{p.state.max, "state.max"},
                                     {p.state.sum, "state.sum"},
                                     {p.state.target_logit, "state.target_logit"},
                                     {p.targets, "targets"},
                                     {p.loss, "loss"},
                                     {p.lse, "lse"}}));
  if (p.tokens <= 0) return absl::OkStatus();
  FinishKernel<<<GridStrideBlocks(p.tokens), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      p.targets, p.state.max, p.state.sum, p.state.target_logit, p.loss, p.lse, p.tokens);
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

absl::Status LaunchCrossEntropyBackward(const CrossEntropyBackwardParams& p, StreamHandle stream) {
  MIMO_RETURN_IF_ERROR(CheckCrossEntropyBackward(p));
  MIMO_RETURN_IF_ERROR(CheckRowsFitTheGrid("CrossEntropyBackward", p.tokens));
  if (p.tokens == 0 || p.chunk == 0) return absl::OkStatus();
  const auto s = static_cast<cudaStream_t>(stream);
  if (p.dtype == DType::kF32) {
    Backward<float>(p, s);
  } else {
    Backward<__nv_bfloat16>(p, s);
  }
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace mimo::kernels
