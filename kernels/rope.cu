// Rotary position embedding: the CUDA kernel. One thread per (token, i < rotary_dim / 2) pair
// computes the angle in double once and rotates that pair in every head; pass-through elements
// are copied by the same threads.
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>

#include "kernels/cuda_elements.cuh"
#include "kernels/cuda_launch.h"
#include "kernels/cuda_status.h"
#include "kernels/rope.h"

namespace mimo::kernels {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void RopeKernel(const T* x, T* y, const int32_t* __restrict__ positions, int64_t tokens,
                           int64_t heads, int64_t head_dim, int64_t rotary_dim, double log_base,
                           bool backward) {
  const int64_t half = rotary_dim / 2;
  // Work items per token: the rotated pairs, then the pass-through elements of one head.
  const int64_t per_token = half + (head_dim - rotary_dim);
  const int64_t n = tokens * per_token;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < n;
       k += stride) {
    const int64_t t = k / per_token, j = k % per_token;
    if (j < half) {
      const double theta =
          positions[t] * exp(-2.0 * static_cast<double>(j) / rotary_dim * log_base);
      double s, c;
      sincos(theta, &s, &c);
      const float cos = static_cast<float>(c);
      const float sin = static_cast<float>(backward ? -s : s);
      for (int64_t h = 0; h < heads; ++h) {
        const int64_t base = (t * heads + h) * head_dim;
        const float a = ToFloat(x[base + j]);
        const float b = ToFloat(x[base + j + half]);
        Put(&y[base + j], a * cos - b * sin);
        Put(&y[base + j + half], b * cos + a * sin);
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

}  // namespace

absl::Status LaunchRope(const RopeParams& p, StreamHandle stream) {
  MIMO_RETURN_IF_ERROR(CheckRope(p));
  if (p.tokens * p.heads == 0) return absl::OkStatus();
  const int64_t n = p.tokens * (p.rotary_dim / 2 + (p.head_dim - p.rotary_dim));
  const unsigned blocks = GridStrideBlocks(n);
  const auto s = static_cast<cudaStream_t>(stream);
  const double log_base = std::log(p.base);
  if (p.dtype == DType::kF32) {
    RopeKernel<float><<<blocks, kThreads, 0, s>>>(
        static_cast<const float*>(p.x), static_cast<float*>(p.y), p.positions, p.tokens, p.heads,
        p.head_dim, p.rotary_dim, log_base, p.backward);
  } else {
    RopeKernel<__nv_bfloat16><<<blocks, kThreads, 0, s>>>(
        static_cast<const __nv_bfloat16*>(p.x), static_cast<__nv_bfloat16*>(p.y), p.positions,
        p.tokens, p.heads, p.head_dim, p.rotary_dim, log_base, p.backward);
  }
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace mimo::kernels
