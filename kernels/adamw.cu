// AdamW and the sum of squares: the CUDA kernels. AdamW is elementwise over a grid-stride loop;
// the sum of squares writes one partial per block (a grid fixed by the size, so a fixed order) and
// one block then adds the partials.
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "kernels/adamw.h"
#include "kernels/cuda_block_reduce.cuh"
#include "kernels/cuda_elements.cuh"
#include "kernels/cuda_launch.h"
#include "kernels/cuda_status.h"

namespace mimo::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kPartials = 1024;  // Blocks of the sum of squares' first pass.

template <typename G, typename M>
__global__ void AdamWKernel(float* __restrict__ master, float* __restrict__ m_io,
                            float* __restrict__ v_io, const G* __restrict__ grad,
                            M* __restrict__ model, int64_t n, float lr, float beta1, float beta2,
                            float c1, float c2, float eps, float weight_decay, float grad_scale) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const float g = ToFloat(grad[i]) * grad_scale;
    const float m = beta1 * m_io[i] + (1.0f - beta1) * g;
    const float v = beta2 * v_io[i] + (1.0f - beta2) * g * g;
    m_io[i] = m;
    v_io[i] = v;
    const float update = (m / c1) / (sqrtf(v / c2) + eps) + weight_decay * master[i];
    const float w = master[i] - lr * update;
    master[i] = w;
    if (model != nullptr) Put(&model[i], w);
  }
}

// 16-byte aligned fp32 (every gradient buffer) is read as float4: one load instruction per four
// elements keeps the read at the bandwidth floor.
template <typename T>
__global__ void PartialSumSquaresKernel(const T* __restrict__ x, int64_t n,
                                        float* __restrict__ partials) {
  __shared__ float scratch[kThreads / 32];
  float sum = 0.0f;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  int64_t scalar_from = 0;
  if constexpr (std::is_same_v<T, float>) {
    if (reinterpret_cast<uintptr_t>(x) % 16 == 0) {
      const auto* v = reinterpret_cast<const float4*>(x);
      for (int64_t i = first; i < n / 4; i += stride) {
        const float4 a = v[i];
        sum += a.x * a.x + a.y * a.y + a.z * a.z + a.w * a.w;
      }
      scalar_from = n / 4 * 4;
    }
  }
  for (int64_t i = scalar_from + first; i < n; i += stride) {
    const float v = ToFloat(x[i]);
    sum += v * v;
  }
  sum = BlockSum(sum, scratch);
  if (threadIdx.x == 0) partials[blockIdx.x] = sum;
}

__global__ void SumPartialsKernel(const float* __restrict__ partials, int count,
                                  float* __restrict__ out) {
  __shared__ float scratch[kThreads / 32];
  float sum = 0.0f;
  for (int i = threadIdx.x; i < count; i += blockDim.x) sum += partials[i];
  sum = BlockSum(sum, scratch);
  if (threadIdx.x == 0) *out = sum;
}

template <typename G, typename M>
void Launch(const AdamWParams& p, float c1, float c2, cudaStream_t s) {
  const unsigned blocks = GridStrideBlocks(p.n);
  AdamWKernel<G, M><<<blocks, kThreads, 0, s>>>(
      p.master, p.m, p.v, static_cast<const G*>(p.grad), static_cast<M*>(p.model), p.n, p.lr,
      p.beta1, p.beta2, c1, c2, p.eps, p.weight_decay, p.grad_scale);
}

}  // namespace

absl::Status LaunchAdamW(const AdamWParams& p, StreamHandle stream) {
  MIMO_RETURN_IF_ERROR(CheckAdamW(p));
  if (p.n == 0) return absl::OkStatus();
  const auto s = static_cast<cudaStream_t>(stream);
  // The bias corrections as the CPU twin computes them.
  const float c1 = 1.0f - static_cast<float>(std::pow(p.beta1, static_cast<double>(p.step)));
  const float c2 = 1.0f - static_cast<float>(std::pow(p.beta2, static_cast<double>(p.step)));
  const bool bf16_grad = p.grad_dtype == DType::kBF16;
  const bool bf16_model = p.model_dtype == DType::kBF16;
  if (bf16_grad && bf16_model) {
    Launch<__nv_bfloat16, __nv_bfloat16>(p, c1, c2, s);
  } else if (bf16_grad) {
    Launch<__nv_bfloat16, float>(p, c1, c2, s);
  } else if (bf16_model) {
    Launch<float, __nv_bfloat16>(p, c1, c2, s);
  } else {
    Launch<float, float>(p, c1, c2, s);
  }
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

size_t SumSquaresWorkspaceBytes() { return kPartials * sizeof(float); }

absl::Status LaunchSumSquares(const SumSquaresParams& p, void* workspace, StreamHandle stream) {
  MIMO_RETURN_IF_ERROR(CheckSumSquares(p));
  if (workspace == nullptr) {
    return absl::InvalidArgumentError("SumSquares: the workspace is null");
  }
  const auto s = static_cast<cudaStream_t>(stream);
  // One block per kThreads x 16 elements, up to kPartials: a small tensor (a norm's weight, a bias)
  // takes one block, which writes the sum itself.
  const unsigned blocks = static_cast<unsigned>(
      std::clamp<int64_t>((p.n + kThreads * 16 - 1) / (kThreads * 16), 1, kPartials));
  float* partials = blocks == 1 ? p.out : static_cast<float*>(workspace);
  if (p.dtype == DType::kF32) {
    PartialSumSquaresKernel<float>
        <<<blocks, kThreads, 0, s>>>(static_cast<const float*>(p.x), p.n, partials);
  } else {
    PartialSumSquaresKernel<__nv_bfloat16>
        <<<blocks, kThreads, 0, s>>>(static_cast<const __nv_bfloat16*>(p.x), p.n, partials);
  }
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  if (blocks == 1) return absl::OkStatus();
  SumPartialsKernel<<<1, kThreads, 0, s>>>(partials, static_cast<int>(blocks), p.out);
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace mimo::kernels
