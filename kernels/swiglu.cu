// SwiGLU, forward and backward: the CUDA kernels (fp32 arithmetic on bf16 or f32 storage).
//
// Both are pure streams (the forward reads 2 and writes 1 element per output, the backward reads 3
// and writes 2), so they are built to run at copy bandwidth: each thread moves 16-byte packs (8
// bf16 or 4 f32 of a row's gate, up, dy, y, dgate, dup) with several packs of each input loaded
// before the first is used, over a grid-stride loop on a resident grid (RowCursor keeps the row
// and column without dividing per pack). Rows whose length or buffers do not allow 16-byte packs
// take the same code with one-element packs. Every output element is computed by one thread from
// its own inputs, so results do not depend on the grid and are bitwise reproducible.
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include "kernels/cuda_elements.cuh"
#include "kernels/cuda_grid.cuh"
#include "kernels/cuda_status.h"
#include "kernels/cuda_vector.cuh"
#include "kernels/swiglu.h"

namespace mimo::kernels {
namespace {

constexpr int kThreads = 256;
// Packs of each input in flight per thread: the forward 4 (of 16 bytes, or single elements), the
// backward 3 of 16 bytes or 4 single elements. With the register caps below (128 a thread) 2
// blocks fit on a multiprocessor, with 64 or 72 KB of loads in flight on each: enough for copy
// bandwidth, with the independent packs hiding the sigmoid's latency (the backward's third pack:
// 2.9% faster than two at 8192 x 14336 bf16 on an H100, 2026-12-06 in bench/RESULTS.md).
constexpr int kForwardUnroll = 4;
template <int N>
inline constexpr int kBackwardUnroll = N > 1 ? 3 : 4;

// __frcp_rn is the correctly rounded reciprocal: the same bits as 1.0f / x, without the division.
__device__ __forceinline__ float Sigmoid(float a) { return __frcp_rn(1.0f + expf(-a)); }

// y[r, c] = silu(x[r, c]) * x[r, cols + c], over packs of N elements (cols % N == 0).
template <typename T, int N>
__global__ void __launch_bounds__(kThreads, 2)
    SwigluKernel(const T* __restrict__ x, T* __restrict__ y, int64_t rows, int64_t cols) {
  using P = Pack<T, N>;
  const P* __restrict__ xp = reinterpret_cast<const P*>(x);
  P* __restrict__ yp = reinterpret_cast<P*>(y);
  const int64_t packs = cols / N;  // Per row of y; a row of x holds 2 * packs.
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t step_rows = stride / packs, step_cols = stride % packs;
  RowCursor at(static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x, packs);
  while (at.row < rows) {
    P gate[kForwardUnroll], up[kForwardUnroll];
    int64_t out[kForwardUnroll];  // Pack index in y, or -1 past the end.
#pragma unroll
    for (int u = 0; u < kForwardUnroll; ++u) {
      out[u] = at.row < rows ? at.row * packs + at.col : -1;
      if (out[u] >= 0) {
        const int64_t g = out[u] + at.row * packs;  // row * 2 * packs + col.
        gate[u] = xp[g];
        up[u] = xp[g + packs];
      }
      at.Advance(step_rows, step_cols, packs);
    }
#pragma unroll
    for (int u = 0; u < kForwardUnroll; ++u) {
      if (out[u] < 0) continue;
      P result;
#pragma unroll
      for (int e = 0; e < N; ++e) {
        const float a = ToFloat(gate[u].v[e]);
        Put(&result.v[e], a * Sigmoid(a) * ToFloat(up[u].v[e]));
      }
      yp[out[u]] = result;
    }
  }
}

// dgate = dy * up * silu'(gate), dup = dy * silu(gate), over packs of N elements.
template <typename T, int N>
__global__ void __launch_bounds__(kThreads, 2)
    SwigluBackwardKernel(const T* __restrict__ dy, const T* __restrict__ x, T* __restrict__ dx,
                         int64_t rows, int64_t cols) {
  using P = Pack<T, N>;
  const P* __restrict__ dyp = reinterpret_cast<const P*>(dy);
  const P* __restrict__ xp = reinterpret_cast<const P*>(x);
  P* __restrict__ dxp = reinterpret_cast<P*>(dx);
  const int64_t packs = cols / N;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t step_rows = stride / packs, step_cols = stride % packs;
  RowCursor at(static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x, packs);
  while (at.row < rows) {
    P d[kBackwardUnroll<N>], gate[kBackwardUnroll<N>], up[kBackwardUnroll<N>];
    int64_t in[kBackwardUnroll<N>],
        g[kBackwardUnroll<N>];  // Pack index in dy (-1 past the end), and of gate in x.
#pragma unroll
    for (int u = 0; u < kBackwardUnroll<N>; ++u) {
      in[u] = at.row < rows ? at.row * packs + at.col : -1;
      g[u] = in[u] + at.row * packs;
      if (in[u] >= 0) {
        d[u] = dyp[in[u]];
        gate[u] = xp[g[u]];
        up[u] = xp[g[u] + packs];
      }
      at.Advance(step_rows, step_cols, packs);
    }
#pragma unroll
    for (int u = 0; u < kBackwardUnroll<N>; ++u) {
      if (in[u] < 0) continue;
      P dgate, dup;
#pragma unroll
      for (int e = 0; e < N; ++e) {
        const float a = ToFloat(gate[u].v[e]);
        const float b = ToFloat(up[u].v[e]);
        const float dv = ToFloat(d[u].v[e]);
        const float s = Sigmoid(a);
        // The explicit fma keeps the vector and scalar instantiations bitwise alike.
        Put(&dgate.v[e], dv * b * s * __fmaf_rn(a, 1.0f - s, 1.0f));
        Put(&dup.v[e], dv * a * s);
      }
      dxp[g[u]] = dgate;
      dxp[g[u] + packs] = dup;
    }
  }
}

template <typename T, int N>
void Forward(const SwigluParams& p, cudaStream_t s) {
  const unsigned grid = GridFor(p.rows * (p.cols / N), int64_t{kThreads} * kForwardUnroll,
                                ResidentBlocks<SwigluKernel<T, N>>(kThreads));
  SwigluKernel<T, N>
      <<<grid, kThreads, 0, s>>>(static_cast<const T*>(p.x), static_cast<T*>(p.y), p.rows, p.cols);
}

template <typename T>
void Forward(const SwigluParams& p, cudaStream_t s) {
  if (p.cols % kVecWidth<T> == 0 && VecAligned(p.x) && VecAligned(p.y)) {
    Forward<T, kVecWidth<T>>(p, s);
  } else {
    Forward<T, 1>(p, s);
  }
}

// The backward's grid covers the items in one pass per thread (up to CUDA's grid limit, past which
// the loop strides) rather than one resident wave: 3% faster at 8192 x 14336 bf16 on an H100
// (2026-12-06 in bench/RESULTS.md; the forward is faster on a resident grid).
template <typename T, int N>
void Backward(const SwigluBackwardParams& p, cudaStream_t s) {
  const unsigned grid =
      GridFor(p.rows * (p.cols / N), int64_t{kThreads} * kBackwardUnroll<N>, 0x7fffffffu);
  SwigluBackwardKernel<T, N><<<grid, kThreads, 0, s>>>(static_cast<const T*>(p.dy),
                                                       static_cast<const T*>(p.x),
                                                       static_cast<T*>(p.dx), p.rows, p.cols);
}

template <typename T>
void Backward(const SwigluBackwardParams& p, cudaStream_t s) {
  if (p.cols % kVecWidth<T> == 0 && VecAligned(p.dy) && VecAligned(p.x) && VecAligned(p.dx)) {
    Backward<T, kVecWidth<T>>(p, s);
  } else {
    Backward<T, 1>(p, s);
  }
}

}  // namespace

absl::Status LaunchSwiglu(const SwigluParams& p, StreamHandle stream) {
  MIMO_RETURN_IF_ERROR(CheckSwiglu(p));
  if (p.rows * p.cols == 0) return absl::OkStatus();
  const auto s = static_cast<cudaStream_t>(stream);
  if (p.dtype == DType::kF32) {
    Forward<float>(p, s);
  } else {
    Forward<__nv_bfloat16>(p, s);
  }
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

absl::Status LaunchSwigluBackward(const SwigluBackwardParams& p, StreamHandle stream) {
  MIMO_RETURN_IF_ERROR(CheckSwigluBackward(p));
  if (p.rows * p.cols == 0) return absl::OkStatus();
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
