// RMSNorm over the last dimension, forward and backward: the CUDA kernels (fp32 arithmetic on
// bf16 or f32 storage). One block per row for the forward and dx; one thread per column, looping
// over rows, for dweight, so that the sum is deterministic.
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "kernels/cuda_block_reduce.cuh"
#include "kernels/cuda_elements.cuh"
#include "kernels/cuda_launch.h"
#include "kernels/cuda_status.h"
#include "kernels/rmsnorm.h"

namespace mimo::kernels {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void RmsNormKernel(const T* __restrict__ x, const T* __restrict__ weight,
                              T* __restrict__ y, float* __restrict__ rstd_out, int64_t cols,
                              float eps) {
  __shared__ float scratch[kThreads / 32];
  const int64_t row = blockIdx.x;
  const T* xr = x + row * cols;
  T* yr = y + row * cols;
  float sum = 0.0f;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    const float v = ToFloat(xr[c]);
    sum += v * v;
  }
  sum = BlockSum(sum, scratch);
  const float rstd = rsqrtf(sum / static_cast<float>(cols) + eps);
  if (threadIdx.x == 0) rstd_out[row] = rstd;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    Put(&yr[c], ToFloat(xr[c]) * rstd * ToFloat(weight[c]));
  }
}

template <typename T>
__global__ void RmsNormDxKernel(const T* __restrict__ dy, const T* __restrict__ x,
                                const T* __restrict__ weight, const float* __restrict__ rstd_in,
                                T* __restrict__ dx, int64_t cols) {
  __shared__ float scratch[kThreads / 32];
  const int64_t row = blockIdx.x;
  const int64_t base = row * cols;
  const float rstd = rstd_in[row];
  float dot = 0.0f;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    dot += ToFloat(dy[base + c]) * ToFloat(weight[c]) * ToFloat(x[base + c]) * rstd;
  }
  const float mean = BlockSum(dot, scratch) / static_cast<float>(cols);
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    const float xhat = ToFloat(x[base + c]) * rstd;
    const float g = ToFloat(dy[base + c]) * ToFloat(weight[c]);
    Put(&dx[base + c], rstd * (g - xhat * mean));
  }
}

template <typename T>
__global__ void RmsNormDweightKernel(const T* __restrict__ dy, const T* __restrict__ x,
                                     const float* __restrict__ rstd, float* __restrict__ dweight,
                                     int64_t rows, int64_t cols) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  float sum = 0.0f;
  for (int64_t r = 0; r < rows; ++r) {
    sum += ToFloat(dy[r * cols + c]) * ToFloat(x[r * cols + c]) * rstd[r];
  }
  dweight[c] = sum;
}

template <typename T>
absl::Status Forward(const RmsNormParams& p, cudaStream_t stream) {
  RmsNormKernel<T><<<static_cast<unsigned>(p.rows), kThreads, 0, stream>>>(
      static_cast<const T*>(p.x), static_cast<const T*>(p.weight), static_cast<T*>(p.y), p.rstd,
      p.cols, p.eps);
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

template <typename T>
absl::Status Backward(const RmsNormBackwardParams& p, cudaStream_t stream) {
  if (p.rows > 0) {
    RmsNormDxKernel<T><<<static_cast<unsigned>(p.rows), kThreads, 0, stream>>>(
        static_cast<const T*>(p.dy), static_cast<const T*>(p.x), static_cast<const T*>(p.weight),
        p.rstd, static_cast<T*>(p.dx), p.cols);
    MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  }
  if (p.dweight != nullptr && p.cols > 0) {
    const int64_t blocks = (p.cols + kThreads - 1) / kThreads;
    RmsNormDweightKernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        static_cast<const T*>(p.dy), static_cast<const T*>(p.x), p.rstd, p.dweight, p.rows, p.cols);
    MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status LaunchRmsNorm(const RmsNormParams& p, StreamHandle stream) {
  MIMO_RETURN_IF_ERROR(CheckRmsNorm(p));
  MIMO_RETURN_IF_ERROR(CheckRowsFitTheGrid("RmsNorm", p.rows));
  if (p.rows == 0) return absl::OkStatus();
  const auto s = static_cast<cudaStream_t>(stream);
  return p.dtype == DType::kF32 ? Forward<float>(p, s) : Forward<__nv_bfloat16>(p, s);
}

absl::Status LaunchRmsNormBackward(const RmsNormBackwardParams& p, StreamHandle stream) {
  MIMO_RETURN_IF_ERROR(CheckRmsNormBackward(p));
  MIMO_RETURN_IF_ERROR(CheckRowsFitTheGrid("RmsNormBackward", p.rows));
  const auto s = static_cast<cudaStream_t>(stream);
  if (p.rows == 0 && p.dweight != nullptr && p.cols > 0) {
    MIMO_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(p.dweight, 0, p.cols * sizeof(float), s));
    return absl::OkStatus();
  }
  return p.dtype == DType::kF32 ? Backward<float>(p, s) : Backward<__nv_bfloat16>(p, s);
}

}  // namespace mimo::kernels
