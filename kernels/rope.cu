// Rotary position embedding: the CUDA kernels.
//
// The fast path moves 16-byte packs (8 bf16 or 4 f32): a thread takes one pack column of one
// token (the packs at j of both rotated halves, or a pass-through pack) over a group of its heads,
// so the column's angles are computed once per thread, and the grid covers the tokens in one pass
// of many small blocks (heads are split into groups, each taken by its own threads, until there
// are about 2^20 threads). Angles: theta = position * base^(-2i / rotary_dim) formed and reduced
// to [-pi, pi] in double (the frequencies in a per-block table), cos and sin in float. Shapes
// whose rotary half or head size is not a whole number of packs, more than kMaxHalf pairs, or
// misaligned buffers take the scalar kernel: one thread per (token, i < rotary_dim / 2) pair
// computes the angle the same way and rotates that pair in every head; pass-through elements are
// copied by the same threads. Both compute every element from its own inputs, with the same
// arithmetic, so results are bitwise reproducible.
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>

#include "kernels/cuda_elements.cuh"
#include "kernels/cuda_grid.cuh"
#include "kernels/cuda_launch.h"
#include "kernels/cuda_status.h"
#include "kernels/cuda_vector.cuh"
#include "kernels/fast_divider.h"
#include "kernels/rope.h"

namespace mimo::kernels {
namespace {

constexpr int kThreads = 256;
// Threads the vector kernel aims for: below this, a token's heads are split into groups, each
// taken by its own threads (which compute the same angles again). At 16384 tokens of 32 heads of
// 128 bf16, 2^20 (4 heads a thread) was the fastest of 2^19 to 2^21 on an H100 (and, with an
// earlier angle computation, on an H200; 2026-12-06 in bench/RESULTS.md).
constexpr int64_t kTargetThreads = int64_t{1} << 20;
// Rotated pairs the vector kernel takes at most (a block's table of their frequencies: 4 KB).
constexpr int kMaxHalf = 512;

// The rotation of (a, b) by the angle whose (cos, sin) is `cs`.
__device__ __forceinline__ float RotateFirst(float a, float b, float2 cs) {
  return a * cs.x - b * cs.y;
}
__device__ __forceinline__ float RotateSecond(float a, float b, float2 cs) {
  return b * cs.x + a * cs.y;
}

// base^(-2i / rotary_dim), the frequency of pair i, in double.
__device__ __forceinline__ double InvFreq(int i, int64_t rotary_dim, double log_base) {
  return exp(-2.0 * static_cast<double>(i) / rotary_dim * log_base);
}

// The (cos, sin) of theta = position * inv_freq, sin negated backward. theta is formed and
// reduced to [-pi, pi] in double (exact enough for positions in the millions), its cos and sin
// taken in float by the multiprocessor's approximations (absolute error below 5e-7, as large as
// rounding the reduced angle to float): a double-precision sincos took about 100 instructions and
// tens of registers per angle.
__device__ __forceinline__ float2 Angle(int32_t position, double inv_freq, bool backward) {
  constexpr double kTwoPiHi = 6.283185307179586232;    // 2 pi rounded to double,
  constexpr double kTwoPiLo = 2.4492935982947064e-16;  // and the rest.
  const double theta = position * inv_freq;
  const double turns = rint(theta * (1.0 / kTwoPiHi));
  const auto r = static_cast<float>(fma(-turns, kTwoPiLo, fma(-turns, kTwoPiHi, theta)));
  float s, c;
  __sincosf(r, &s, &c);
  return make_float2(c, backward ? -s : s);
}

// How the vector kernel splits its work: thread (token t, head group g, column j) takes pack
// column j (j < rot_packs: the packs at j * N of both rotated halves; past that: a pass-through
// pack) of heads [g * group_heads, (g + 1) * group_heads) of token t. Threads of one token and
// group are adjacent by j, so a warp reads whole 128-byte lines.
struct RopeVecShape {
  uint32_t items;        // Threads: tokens * groups * columns (< 2^31).
  FastDivider token_of;  // item / (groups * columns).
  int per_token;         // groups * columns.
  int columns;           // rot_packs + pass_packs.
  int rot_packs;         // rotary_dim / 2 / N.
  int group_heads;       // Heads a thread takes.
  int heads, head_dim, rotary_dim;
};

// The vector path (half and head_dim multiples of N). Each thread computes the angles of its
// pack column once, then rotates (or copies) that column of its heads one head at a time; a
// multiprocessor holds up to 32 such warps, whose loads overlap one another's arithmetic. x and y
// may alias (in place: every element is read and then written by the same thread), so they are
// not __restrict__.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    RopeVecKernel(const T* x, T* y, const int32_t* __restrict__ positions, RopeVecShape shape,
                  double log_base, bool backward) {
  constexpr int N = kVecWidth<T>;
  using P = Pack<T, N>;
  // The frequencies of every pair, computed once per block (one exp each).
  __shared__ double inv_freq[kMaxHalf];
  const int half = shape.rotary_dim / 2;
  for (int i = threadIdx.x; i < half; i += kThreads) {
    inv_freq[i] = InvFreq(i, shape.rotary_dim, log_base);
  }
  __syncthreads();
  const uint32_t item = blockIdx.x * kThreads + threadIdx.x;
  if (item >= shape.items) return;
  const uint32_t t = shape.token_of(item);
  const int rest = static_cast<int>(item - t * static_cast<uint32_t>(shape.per_token));
  const int g = rest / shape.columns, j = rest - g * shape.columns;
  const int h0 = g * shape.group_heads;
  const int h1 = min(h0 + shape.group_heads, shape.heads);
  // Head h0 of token t; a pass-through column's pack sits past the rotated part.
  const T* in = x + (static_cast<int64_t>(t) * shape.heads + h0) * shape.head_dim;
  T* out = y + (static_cast<int64_t>(t) * shape.heads + h0) * shape.head_dim;
  if (j >= shape.rot_packs) {
    const int offset = shape.rotary_dim + (j - shape.rot_packs) * N;
    for (int h = h0; h < h1; ++h, in += shape.head_dim, out += shape.head_dim) {
      *reinterpret_cast<P*>(out + offset) = *reinterpret_cast<const P*>(in + offset);
    }
    return;
  }
  const int32_t position = positions[t];
  float2 cs[N];  // The column's (cos, sin) pairs.
#pragma unroll
  for (int e = 0; e < N; ++e) cs[e] = Angle(position, inv_freq[j * N + e], backward);
  for (int h = h0; h < h1; ++h, in += shape.head_dim, out += shape.head_dim) {
    const P a = *reinterpret_cast<const P*>(in + j * N);
    const P b = *reinterpret_cast<const P*>(in + j * N + half);
    P ya, yb;
#pragma unroll
    for (int e = 0; e < N; ++e) {
      const float av = ToFloat(a.v[e]), bv = ToFloat(b.v[e]);
      Put(&ya.v[e], RotateFirst(av, bv, cs[e]));
      Put(&yb.v[e], RotateSecond(av, bv, cs[e]));
    }
    *reinterpret_cast<P*>(out + j * N) = ya;
    *reinterpret_cast<P*>(out + j * N + half) = yb;
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
      const float2 cs =
          Angle(positions[t], InvFreq(static_cast<int>(j), rotary_dim, log_base), backward);
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
  const int64_t columns = half / N + (p.x == p.y ? 0 : (p.head_dim - p.rotary_dim) / N);
  // Head groups: enough threads to fill the device, each group at least one head.
  const int64_t groups =
      std::clamp<int64_t>(kTargetThreads / std::max<int64_t>(p.tokens * columns, 1), 1, p.heads);
  const int64_t group_heads = (p.heads + groups - 1) / groups;
  const int64_t per_token = (p.heads + group_heads - 1) / group_heads * columns;
  if (half % N == 0 && p.head_dim % N == 0 && half <= kMaxHalf &&
      p.tokens * per_token < (int64_t{1} << 31) && p.heads * p.head_dim < (int64_t{1} << 31) &&
      VecAligned(p.x) && VecAligned(p.y)) {
    const RopeVecShape shape{.items = static_cast<uint32_t>(p.tokens * per_token),
                             .token_of = FastDivider(static_cast<uint32_t>(per_token)),
                             .per_token = static_cast<int>(per_token),
                             .columns = static_cast<int>(columns),
                             .rot_packs = static_cast<int>(half / N),
                             .group_heads = static_cast<int>(group_heads),
                             .heads = static_cast<int>(p.heads),
                             .head_dim = static_cast<int>(p.head_dim),
                             .rotary_dim = static_cast<int>(p.rotary_dim)};
    const auto grid = static_cast<unsigned>((shape.items + kThreads - 1) / kThreads);
    RopeVecKernel<T><<<grid, kThreads, 0, s>>>(x, y, p.positions, shape, log_base, p.backward);
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
