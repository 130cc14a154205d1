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
constexpr float kSqrt2OverPi = 0.79788456080286536f;
constexpr float kTanhCubic = 0.044715f;

// The forward value and the derivative of GELU at v.
template <GeluApproximation A>
__device__ __forceinline__ float GeluOf(float v) {
  if constexpr (A == GeluApproximation::kNone) {
    return v * 0.5f * erfcf(-v * kInvSqrt2);
  } else {
    return 0.5f * v * (1.0f + tanhf(kSqrt2OverPi * (v + kTanhCubic * v * v * v)));
  }
}

template <GeluApproximation A>
__device__ __forceinline__ float GeluDerivativeOf(float v) {
  if constexpr (A == GeluApproximation::kNone) {
    return 0.5f * erfcf(-v * kInvSqrt2) + v * kInvSqrt2Pi * expf(-0.5f * v * v);
  } else {
    const float t = tanhf(kSqrt2OverPi * (v + kTanhCubic * v * v * v));
    return 0.5f * (1.0f + t) +
           0.5f * v * (1.0f - t * t) * kSqrt2OverPi * (1.0f + 3.0f * kTanhCubic * v * v);
  }
}

template <typename T, GeluApproximation A>
__global__ void GeluKernel(const T* x, T* y, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    Put(&y[i], GeluOf<A>(ToFloat(x[i])));
  }
}

template <typename T, GeluApproximation A>
__global__ void GeluBackwardKernel(const T* dy, const T* x, T* dx, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    Put(&dx[i], ToFloat(dy[i]) * GeluDerivativeOf<A>(ToFloat(x[i])));
  }
}

template <typename T>
void EnqueueGelu(const GeluParams& p, cudaStream_t s) {
  const auto* x = static_cast<const T*>(p.x);
  auto* y = static_cast<T*>(p.y);
  if (p.approximation == GeluApproximation::kNone) {
    GeluKernel<T, GeluApproximation::kNone><<<GridStrideBlocks(p.n), kThreads, 0, s>>>(x, y, p.n);
  } else {
    GeluKernel<T, GeluApproximation::kTanh><<<GridStrideBlocks(p.n), kThreads, 0, s>>>(x, y, p.n);
  }
}

template <typename T>
void EnqueueGeluBackward(const GeluBackwardParams& p, cudaStream_t s) {
  const auto* dy = static_cast<const T*>(p.dy);
  const auto* x = static_cast<const T*>(p.x);
  auto* dx = static_cast<T*>(p.dx);
  if (p.approximation == GeluApproximation::kNone) {
    GeluBackwardKernel<T, GeluApproximation::kNone>
        <<<GridStrideBlocks(p.n), kThreads, 0, s>>>(dy, x, dx, p.n);
  } else {
    GeluBackwardKernel<T, GeluApproximation::kTanh>
        <<<GridStrideBlocks(p.n), kThreads, 0, s>>>(dy, x, dx, p.n);
  }
}

}  // namespace

absl::Status LaunchGelu(const GeluParams& p, StreamHandle stream) {
  MIMO_RETURN_IF_ERROR(CheckGelu(p));
  if (p.n == 0) return absl::OkStatus();
  const auto s = static_cast<cudaStream_t>(stream);
  if (p.dtype == DType::kF32) {
    EnqueueGelu<float>(p, s);
  } else {
    EnqueueGelu<__nv_bfloat16>(p, s);
  }
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

absl::Status LaunchGeluBackward(const GeluBackwardParams& p, StreamHandle stream) {
  MIMO_RETURN_IF_ERROR(CheckGeluBackward(p));
  if (p.n == 0) return absl::OkStatus();
  const auto s = static_cast<cudaStream_t>(stream);
  if (p.dtype == DType::kF32) {
    EnqueueGeluBackward<float>(p, s);
  } else {
    EnqueueGeluBackward<__nv_bfloat16>(p, s);
  }
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace mimo::kernels
