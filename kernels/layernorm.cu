// LayerNorm over the last dimension, forward and backward: the CUDA kernels (fp32 arithmetic on
// bf16 or f32 storage). One block per row for the forward and dx (two-pass mean and variance);
// dweight and dbias as per-block partial sums over strided rows, then summed in a fixed order, so
// the sums are deterministic.
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "kernels/cuda_block_reduce.cuh"
#include "kernels/cuda_column_sum.cuh"
#include "kernels/cuda_elements.cuh"
#include "kernels/cuda_launch.h"
#include "kernels/cuda_status.h"
#include "kernels/layernorm.h"

namespace mimo::kernels {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void LayerNormKernel(const T* __restrict__ x, const T* __restrict__ weight,
                                const T* __restrict__ bias, T* __restrict__ y,
                                float* __restrict__ mean_out, float* __restrict__ rstd_out,
                                int64_t cols, float eps) {
  __shared__ float scratch[kThreads / 32];
  const int64_t base = static_cast<int64_t>(blockIdx.x) * cols;
  float sum = 0.0f;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) sum += ToFloat(x[base + c]);
  const float mean = BlockSum(sum, scratch) / static_cast<float>(cols);
  float var = 0.0f;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    const float d = ToFloat(x[base + c]) - mean;
    var += d * d;
  }
  const float rstd = rsqrtf(BlockSum(var, scratch) / static_cast<float>(cols) + eps);
  if (threadIdx.x == 0) {
    mean_out[blockIdx.x] = mean;
    rstd_out[blockIdx.x] = rstd;
  }
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    Put(&y[base + c], (ToFloat(x[base + c]) - mean) * rstd * ToFloat(weight[c]) + ToFloat(bias[c]));
  }
}

template <typename T>
__global__ void LayerNormDxKernel(const T* __restrict__ dy, const T* __restrict__ x,
                                  const T* __restrict__ weight, const float* __restrict__ mean_in,
                                  const float* __restrict__ rstd_in, T* __restrict__ dx,
                                  int64_t cols) {
  __shared__ float scratch[kThreads / 32];
  const int64_t base = static_cast<int64_t>(blockIdx.x) * cols;
  const float mean = mean_in[blockIdx.x], rstd = rstd_in[blockIdx.x];
  float sum_g = 0.0f, sum_gx = 0.0f;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    const float g = ToFloat(dy[base + c]) * ToFloat(weight[c]);
    sum_g += g;
    sum_gx += g * (ToFloat(x[base + c]) - mean) * rstd;
  }
  const float mean_g = BlockSum(sum_g, scratch) / static_cast<float>(cols);
  const float mean_gx = BlockSum(sum_gx, scratch) / static_cast<float>(cols);
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    const float xhat = (ToFloat(x[base + c]) - mean) * rstd;
    const float g = ToFloat(dy[base + c]) * ToFloat(weight[c]);
    Put(&dx[base + c], rstd * (g - mean_g - xhat * mean_gx));
  }
}

// Blocks of rows each sum dweight and dbias over the rows g, g + groups, ... into partials
// [0, groups) and [groups, 2 * groups) of (groups, cols) (grid: column blocks x groups, groups
// ColumnPartialGroups); the partials are then summed in order (EnqueueColumnSum), so the result
// depends on the shape only.
template <typename T>
__global__ void LayerNormParamGradPartialKernel(const T* __restrict__ dy, const T* __restrict__ x,
                                                const float* __restrict__ mean,
                                                const float* __restrict__ rstd,
                                                float* __restrict__ partial, int64_t rows,
                                                int64_t cols) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  float dw = 0.0f, db = 0.0f;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const float d = ToFloat(dy[r * cols + c]);
    dw += d * (ToFloat(x[r * cols + c]) - mean[r]) * rstd[r];
    db += d;
  }
  partial[static_cast<int64_t>(blockIdx.y) * cols + c] = dw;
  partial[static_cast<int64_t>(gridDim.y + blockIdx.y) * cols + c] = db;
}

template <typename T>
absl::Status Forward(const LayerNormParams& p, cudaStream_t s) {
  LayerNormKernel<T><<<static_cast<unsigned>(p.rows), kThreads, 0, s>>>(
      static_cast<const T*>(p.x), static_cast<const T*>(p.weight), static_cast<const T*>(p.bias),
      static_cast<T*>(p.y), p.mean, p.rstd, p.cols, p.eps);
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

template <typename T>
absl::Status Backward(const LayerNormBackwardParams& p, cudaStream_t s) {
  LayerNormDxKernel<T><<<static_cast<unsigned>(p.rows), kThreads, 0, s>>>(
      static_cast<const T*>(p.dy), static_cast<const T*>(p.x), static_cast<const T*>(p.weight),
      p.mean, p.rstd, static_cast<T*>(p.dx), p.cols);
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  const int64_t groups = ColumnPartialGroups(p.rows);
  auto* partial = static_cast<float*>(p.workspace);
  const dim3 grid(static_cast<unsigned>((p.cols + kThreads - 1) / kThreads),
                  static_cast<unsigned>(groups));
  LayerNormParamGradPartialKernel<T><<<grid, kThreads, 0, s>>>(static_cast<const T*>(p.dy),
                                                               static_cast<const T*>(p.x), p.mean,
                                                               p.rstd, partial, p.rows, p.cols);
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  EnqueueColumnSum(static_cast<const float*>(partial), p.dweight, groups, p.cols, false, s);
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  EnqueueColumnSum(static_cast<const float*>(partial) + groups * p.cols, p.dbias, groups, p.cols,
                   false, s);
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace

absl::Status LaunchLayerNorm(const LayerNormParams& p, StreamHandle stream) {
  MIMO_RETURN_IF_ERROR(CheckLayerNorm(p));
  MIMO_RETURN_IF_ERROR(CheckRowsFitTheGrid("LayerNorm", p.rows));
  if (p.rows == 0) return absl::OkStatus();
  const auto s = static_cast<cudaStream_t>(stream);
  return p.dtype == DType::kF32 ? Forward<float>(p, s) : Forward<__nv_bfloat16>(p, s);
}

size_t LayerNormBackwardWorkspaceBytes(int64_t rows, int64_t cols) {
  return rows <= 0 || cols <= 0
             ? 0
             : static_cast<size_t>(2 * ColumnPartialGroups(rows) * cols) * sizeof(float);
}

absl::Status LaunchLayerNormBackward(const LayerNormBackwardParams& p, StreamHandle stream) {
  MIMO_RETURN_IF_ERROR(CheckLayerNormBackward(p));
  MIMO_RETURN_IF_ERROR(CheckRowsFitTheGrid("LayerNormBackward", p.rows));
  const size_t needed = LayerNormBackwardWorkspaceBytes(p.rows, p.cols);
  if (p.workspace_bytes < needed || (needed > 0 && p.workspace == nullptr)) {
    return absl::InvalidArgumentError(absl::StrCat("LayerNormBackward: the workspace has ",
                                                   p.workspace_bytes, " bytes, ", needed,
                                                   " are needed"));
  }
  const auto s = static_cast<cudaStream_t>(stream);
  if (p.rows == 0) {
    // The sums over no rows; the gradients may be null then.
    for (float* g : {p.dweight, p.dbias}) {
      if (g != nullptr && p.cols > 0) {
        MIMO_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(g, 0, p.cols * sizeof(float), s));
      }
    }
    return absl::OkStatus();
  }
  return p.dtype == DType::kF32 ? Backward<float>(p, s) : Backward<__nv_bfloat16>(p, s);
}

}  // namespace mimo::kernels
