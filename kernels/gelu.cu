// GELU, forward and backward: the CUDA kernels (fp32 arithmetic on bf16 or f32 storage), one
// thread per element over a grid-stride loop.
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <algorithm>

#include "kernels/cuda_elements.cuh"
#include "kernels/cuda_launch.h"
#include "kernels/cuda_status.h"
#include "kernels/gelu.h"

namespace mimo::kernels {
namespace {

constexpr int kThreads = 256;
constexpr float kInvSqrt2 = 0.70710678118654752f;
constexpr float kInvSqrt2Pi = 0.39894228040143268f;

template <typename T>
__global__ void GeluKernel(const T* x, T* y, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const float v = ToFloat(x[i]);
    Put(&y[i], v * 0.5f * erfcf(-v * kInvSqrt2));
  }
}

template <typename T>
__global__ void GeluBackwardKernel(const T* dy, const T* x, T* dx, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const float v = ToFloat(x[i]);
    const float cdf = 0.5f * erfcf(-v * kInvSqrt2);
    const float pdf = kInvSqrt2Pi * expf(-0.5f * v * v);
    Put(&dx[i], ToFloat(dy[i]) * (cdf + v * pdf));
  }
}

}  // namespace

absl::Status LaunchGelu(const GeluParams& p, StreamHandle stream) {
  MIMO_RETURN_IF_ERROR(CheckGelu(p));
  if (p.n == 0) return absl::OkStatus();
  const auto s = static_cast<cudaStream_t>(stream);
  if (p.dtype == DType::kF32) {
    GeluKernel<float><<<GridStrideBlocks(p.n), kThreads, 0, s>>>(static_cast<const float*>(p.x),
                                                                 static_cast<float*>(p.y), p.n);
  } else {
    GeluKernel<__nv_bfloat16><<<GridStrideBlocks(p.n), kThreads, 0, s>>>(
        static_cast<const __nv_bfloat16*>(p.x), static_cast<__nv_bfloat16*>(p.y), p.n);
  }
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

absl::Status LaunchGeluBackward(const GeluBackwardParams& p, StreamHandle stream) {
  MIMO_RETURN_IF_ERROR(CheckGeluBackward(p));
  if (p.n == 0) return absl::OkStatus();
  const auto s = static_cast<cudaStream_t>(stream);
  if (p.dtype == DType::kF32) {
    GeluBackwardKernel<float><<<GridStrideBlocks(p.n), kThreads, 0, s>>>(
        static_cast<const float*>(p.dy), static_cast<const float*>(p.x), static_cast<float*>(p.dx),
        p.n);
  } else {
    GeluBackwardKernel<__nv_bfloat16><<<GridStrideBlocks(p.n), kThreads, 0, s>>>(
        static_cast<const __nv_bfloat16*>(p.dy), static_cast<const __nv_bfloat16*>(p.x),
        static_cast<__nv_bfloat16*>(p.dx), p.n);
  }
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace mimo::kernels
