// Rotary position embedding: the CUDA kernels.
//
// The fast path moves 16-byte packs (8 bf16 or 4 f32): a block takes a tile of tokens and streams
// its (head, pack) items, kUnroll items (each a pack of the first half and the matching pack of the
// second half, or one pass-through pack) in flight per thread, over a grid-stride loop on a
// resident grid. The tile's angles (cos and sin of theta, computed in double once per (token, i)
// and shared by all heads) are put into shared memory first. Shapes
// whose rotary half or head size is not a whole number of packs, or misaligned buffers, take the
// scalar kernel: one thread per (token, i < rotary_dim / 2) pair computes the angle in double and
// rotates that pair in every head; pass-through elements are copied by the same threads. Both
// compute every element from its own inputs, with the same float arithmetic, so results are bitwise
// reproducible.
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>

#include "kernels/cuda_elements.cuh"
#include "kernels/cuda_grid.cuh"
#include "kernels/cuda_launch.h"
#include "kernels/cuda_status.h"
#include "kernels/cuda_vector.cuh"
#include "kernels/rope.h"

namespace mimo::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kUnroll = 2;           // Items in flight per thread on the vector path.
constexpr int kTableEntries = 1024;  // (cos, sin) pairs of a tile: 8 KB of shared memory.
constexpr int64_t kMaxItemsPerToken = int64_t{1} << 20;  // Keeps tile item counts in 32 bits.

// The rotation of (a, b) by the angle whose (cos, sin) is `cs`.
__device__ __forceinline__ float RotateFirst(float a, float b, float2 cs) {
  return a * cs.x - b * cs.y;
}
__device__ __forceinline__ float RotateSecond(float a, float b, float2 cs) {
  return b * cs.x + a * cs.y;
}

// The (cos, sin) of token position `position` and pair i, theta in double, sin negated backward.
__device__ __forceinline__ float2 Angle(int32_t position, int i, int64_t rotary_dim,
                                        double log_base, bool backward) {
  const double theta = position * exp(-2.0 * static_cast<double>(i) / rotary_dim * log_base);
  double s, c;
  sincos(theta, &s, &c);
  return make_float2(static_cast<float>(c), static_cast<float>(backward ? -s : s));
}

// The vector path: tiles of `tile_tokens` tokens per block and pass. Per token and head there are
// rot_packs = rotary_dim / 2 / N rotation items and `pass_packs` copy items (0 in place). x and y
// may alias, so they are not __restrict__.
template <typename T>
__global__ void __launch_bounds__(kThreads, 4)
    RopeVecKernel(const T* x, T* y, const int32_t* __restrict__ positions, int64_t tokens,
                  int heads, int head_dim, int rotary_dim, int pass_packs, int tile_tokens,
                  double log_base, bool backward) {
  constexpr int N = kVecWidth<T>;
  using P = Pack<T, N>;
  __shared__ float2 table[kTableEntries];
  const int half = rotary_dim / 2;
  const int rot_packs = half / N;
  const int per_head = rot_packs + pass_packs;
  const int per_token = heads * per_head;
  for (int64_t t0 = static_cast<int64_t>(blockIdx.x) * tile_tokens; t0 < tokens;
       t0 += static_cast<int64_t>(gridDim.x) * tile_tokens) {
    const int nt = static_cast<int>(tokens - t0 < tile_tokens ? tokens - t0 : tile_tokens);
    for (int k = threadIdx.x; k < nt * half; k += blockDim.x) {
      const int tl = k / half;
      table[k] = Angle(positions[t0 + tl], k - tl * half, rotary_dim, log_base, backward);
    }
    __syncthreads();
    const int items = nt * per_token;
    for (int first = threadIdx.x; first < items; first += kUnroll * kThreads) {
      P a[kUnroll], b[kUnroll];
      int64_t at[kUnroll];  // Element offset of a (b is half further), or -1 for no item.
      int angle[kUnroll];   // Table index of the pack's first pair, or -1 for a copy.
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int k = first + u * kThreads;
        at[u] = -1;
        if (k >= items) continue;
        const int tl = k / per_token;
        const int h = (k - tl * per_token) / per_head;
        const int j = k - tl * per_token - h * per_head;
        const int64_t head = ((t0 + tl) * heads + h) * head_dim;
        if (j < rot_packs) {
          at[u] = head + j * N;
          angle[u] = tl * half + j * N;
          a[u] = *reinterpret_cast<const P*>(x + at[u]);
          b[u] = *reinterpret_cast<const P*>(x + at[u] + half);
        } else {
          at[u] = head + rotary_dim + (j - rot_packs) * N;
          angle[u] = -1;
          a[u] = *reinterpret_cast<const P*>(x + at[u]);
        }
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        if (at[u] < 0) continue;
        if (angle[u] < 0) {
          *reinterpret_cast<P*>(y + at[u]) = a[u];
          continue;
        }
        P ya, yb;
#pragma unroll
        for (int e = 0; e < N; ++e) {
          const float2 cs = table[angle[u] + e];
          const float av = ToFloat(a[u].v[e]), bv = ToFloat(b[u].v[e]);
          Put(&ya.v[e], RotateFirst(av, bv, cs));
          Put(&yb.v[e], RotateSecond(av, bv, cs));
        }
        *reinterpret_cast<P*>(y + at[u]) = ya;
        *reinterpret_cast<P*>(y + at[u] + half) = yb;
      }
    }
    __syncthreads();  // The table is rewritten for the next tile.
  }
}

template <typename T>
__global__ void RopeScalarKernel(const T* x, T* y, const int32_t* __restrict__ positions,
                                 int64_t tokens, int64_t heads, int64_t head_dim,
                                 int64_t rotary_dim, double log_base, bool backward) {
  const int64_t half = rotary_dim / 2;
  // Work items per token: the rotated pairs, then the pass-through elements of one head.
  const int64_t per_token = half + (head_dim - rotary_dim);
  const int64_t n = tokens * per_token;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < n;
       k += stride) {
    const int64_t t = k / per_token, j = k % per_token;
    if (j < half) {
      const float2 cs = Angle(positions[t], static_cast<int>(j), rotary_dim, log_base, backward);
      for (int64_t h = 0; h < heads; ++h) {
        const int64_t base = (t * heads + h) * head_dim;
        const float a = ToFloat(x[base + j]);
        const float b = ToFloat(x[base + j + half]);
        Put(&y[base + j], RotateFirst(a, b, cs));
        Put(&y[base + j + half], RotateSecond(a, b, cs));
      }
    } else if (x != y) {
      const int64_t d = rotary_dim + (j - half);
      for (int64_t h = 0; h < heads; ++h) {
        const int64_t base = (t * heads + h) * head_dim;
        y[base + d] = x[base + d];
      }
    }
  }
}

template <typename T>
void Launch(const RopeParams& p, cudaStream_t s) {
  constexpr int N = kVecWidth<T>;
  const T* x = static_cast<const T*>(p.x);
  T* y = static_cast<T*>(p.y);
  const double log_base = std::log(p.base);
  const int64_t half = p.rotary_dim / 2;
  const int64_t pass_packs = p.x == p.y ? 0 : (p.head_dim - p.rotary_dim) / N;
  const int64_t per_token = p.heads * (half / N + pass_packs);
  if (half % N == 0 && p.head_dim % N == 0 && half <= kTableEntries &&
      per_token <= kMaxItemsPerToken && VecAligned(p.x) && VecAligned(p.y)) {
    // Tiles of about 2 passes of kUnroll items per thread, as many tokens as the table holds.
    const int64_t tile = std::clamp<int64_t>(
        2 * kUnroll * kThreads / std::max<int64_t>(per_token, 1), 1, kTableEntries / half);
    const unsigned grid = GridFor(p.tokens, tile, ResidentBlocks<RopeVecKernel<T>>(kThreads));
    RopeVecKernel<T><<<grid, kThreads, 0, s>>>(
        x, y, p.positions, p.tokens, static_cast<int>(p.heads), static_cast<int>(p.head_dim),
        static_cast<int>(p.rotary_dim), static_cast<int>(pass_packs), static_cast<int>(tile),
        log_base, p.backward);
  } else {
    const int64_t n = p.tokens * (half + (p.head_dim - p.rotary_dim));
    RopeScalarKernel<T><<<GridStrideBlocks(n), kThreads, 0, s>>>(
        x, y, p.positions, p.tokens, p.heads, p.head_dim, p.rotary_dim, log_base, p.backward);
  }
}

}  // namespace

absl::Status LaunchRope(const RopeParams& p, StreamHandle stream) {
  MIMO_RETURN_IF_ERROR(CheckRope(p));
  if (p.tokens * p.heads == 0) return absl::OkStatus();
  const auto s = static_cast<cudaStream_t>(stream);
  if (p.dtype == DType::kF32) {
    Launch<float>(p, s);
  } else {
    Launch<__nv_bfloat16>(p, s);
  }
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace mimo::kernels
