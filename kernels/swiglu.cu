// SwiGLU, forward and backward: the CUDA kernels (fp32 arithmetic on bf16 or f32 storage), one
// thread per output element over a grid-stride loop.
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <algorithm>

#include "kernels/cuda_elements.cuh"
#include "kernels/cuda_launch.h"
#include "kernels/cuda_status.h"
#include "kernels/swiglu.h"

namespace mimo::kernels {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void SwigluKernel(const T* __restrict__ x, T* __restrict__ y, int64_t rows,
                             int64_t cols) {
  const int64_t n = rows * cols;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const int64_t r = i / cols, c = i % cols;
    const float gate = ToFloat(x[r * 2 * cols + c]);
    const float up = ToFloat(x[r * 2 * cols + cols + c]);
    Put(&y[i], gate / (1.0f + expf(-gate)) * up);
  }
}

template <typename T>
__global__ void SwigluBackwardKernel(const T* __restrict__ dy, const T* __restrict__ x,
                                     T* __restrict__ dx, int64_t rows, int64_t cols) {
  const int64_t n = rows * cols;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const int64_t r = i / cols, c = i % cols;
    const int64_t g = r * 2 * cols + c;
    const float gate = ToFloat(x[g]);
    const float up = ToFloat(x[g + cols]);
    const float d = ToFloat(dy[i]);
    const float s = 1.0f / (1.0f + expf(-gate));
    Put(&dx[g], d * up * s * (1.0f + gate * (1.0f - s)));
    Put(&dx[g + cols], d * gate * s);
  }
}

}  // namespace

absl::Status LaunchSwiglu(const SwigluParams& p, StreamHandle stream) {
  MIMO_RETURN_IF_ERROR(CheckSwiglu(p));
  const int64_t n = p.rows * p.cols;
  if (n == 0) return absl::OkStatus();
  const auto s = static_cast<cudaStream_t>(stream);
  if (p.dtype == DType::kF32) {
    SwigluKernel<float><<<GridStrideBlocks(n), kThreads, 0, s>>>(
        static_cast<const float*>(p.x), static_cast<float*>(p.y), p.rows, p.cols);
  } else {
    SwigluKernel<__nv_bfloat16><<<GridStrideBlocks(n), kThreads, 0, s>>>(
        static_cast<const __nv_bfloat16*>(p.x), static_cast<__nv_bfloat16*>(p.y), p.rows, p.cols);
  }
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

absl::Status LaunchSwigluBackward(const SwigluBackwardParams& p, StreamHandle stream) {
  MIMO_RETURN_IF_ERROR(CheckSwigluBackward(p));
  const int64_t n = p.rows * p.cols;
  if (n == 0) return absl::OkStatus();
  const auto s = static_cast<cudaStream_t>(stream);
  if (p.dtype == DType::kF32) {
    SwigluBackwardKernel<float><<<GridStrideBlocks(n), kThreads, 0, s>>>(
        static_cast<const float*>(p.dy), static_cast<const float*>(p.x), static_cast<float*>(p.dx),
        p.rows, p.cols);
  } else {
    SwigluBackwardKernel<__nv_bfloat16><<<GridStrideBlocks(n), kThreads, 0, s>>>(
        static_cast<const __nv_bfloat16*>(p.dy), static_cast<const __nv_bfloat16*>(p.x),
        static_cast<__nv_bfloat16*>(p.dx), p.rows, p.cols);
  }
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace mimo::kernels
