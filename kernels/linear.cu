// Linear layer on the GPU: the GEMMs through cuBLASLt, GELU's backward, and a deterministic
// column-sum kernel for the bias gradient.
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <algorithm>

#include "common/status_macros.h"
#include "kernels/cuda_device_guard.h"
#include "kernels/cuda_elements.cuh"
#include "kernels/cuda_status.h"
#include "kernels/gelu.h"
#include "kernels/linear.h"

namespace mimo::kernels {
namespace {

constexpr int kColumns = 32;  // Columns per block: one warp reads a row segment coalesced.
constexpr int kLanes = 16;    // Partial sums per column, combined in a fixed order.

// dbias[j] (+)= sum over t of dz[t][j]: each of the kLanes rows of threads sums every kLanes-th
// token, then the partials are added in lane order, so results do not depend on timing.
template <typename T>
__global__ void BiasGradKernel(const T* dz, float* dbias, int64_t tokens, int64_t out,
                               bool accumulate) {
  __shared__ float partial[kLanes][kColumns + 1];
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kColumns + threadIdx.x;
  float sum = 0.0f;
  if (j < out) {
    for (int64_t t = threadIdx.y; t < tokens; t += kLanes) sum += ToFloat(dz[t * out + j]);
  }
  partial[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y != 0 || j >= out) return;
  float total = 0.0f;
  for (int lane = 0; lane < kLanes; ++lane) total += partial[lane][threadIdx.x];
  dbias[j] = accumulate ? dbias[j] + total : total;
}

}  // namespace

absl::Status LaunchLinear(const LinearParams& p, CublasLt& blas, StreamHandle stream) {
  MIMO_RETURN_IF_ERROR(CheckLinear(p));
  CudaDeviceGuard guard(blas.device());
  return blas.Gemm({.ab_dtype = p.dtype,
                    .d_dtype = p.dtype,
                    .a = p.x,
                    .b = p.w,
                    .d = p.y,
                    .transpose_b = true,
                    .m = p.tokens,
                    .n = p.out,
                    .k = p.in,
                    .bias = p.bias,
                    .activation = p.activation,
                    .pre_activation = p.pre_activation},
                   stream);
}

absl::Status LaunchLinearBackward(const LinearBackwardParams& p, CublasLt& blas,
                                  StreamHandle stream) {
  MIMO_RETURN_IF_ERROR(CheckLinearBackward(p));
  CudaDeviceGuard guard(blas.device());
  const void* dz = p.dy;  // (tokens, out)
  if (p.activation != GemmActivation::kNone) {
    MIMO_RETURN_IF_ERROR(LaunchGeluBackward({.dtype = p.dtype,
                                             .dy = p.dy,
                                             .x = p.pre_activation,
                                             .dx = p.dpre_activation,
                                             .n = p.tokens * p.out,
                                             .approximation = GeluApproximation::kTanh},
                                            stream));
    dz = p.dpre_activation;
  }
  if (p.dx != nullptr) {
    MIMO_RETURN_IF_ERROR(blas.Gemm({.ab_dtype = p.dtype,
                                    .d_dtype = p.dtype,
                                    .a = dz,
                                    .b = p.w,
                                    .d = p.dx,
                                    .m = p.tokens,
                                    .n = p.in,
                                    .k = p.out},
                                   stream));
  }
  MIMO_RETURN_IF_ERROR(blas.Gemm({.ab_dtype = p.dtype,
                                  .d_dtype = DType::kF32,
                                  .a = dz,
                                  .b = p.x,
                                  .d = p.dw,
                                  .transpose_a = true,
                                  .m = p.out,
                                  .n = p.in,
                                  .k = p.tokens,
                                  .accumulate = p.accumulate},
                                 stream));
  if (p.dbias == nullptr || p.out == 0) return absl::OkStatus();
  const auto s = static_cast<cudaStream_t>(stream);
  const dim3 grid((p.out + kColumns - 1) / kColumns), block(kColumns, kLanes);
  if (p.dtype == DType::kF32) {
    BiasGradKernel<<<grid, block, 0, s>>>(static_cast<const float*>(dz), p.dbias, p.tokens, p.out,
                                          p.accumulate);
  } else {
    BiasGradKernel<<<grid, block, 0, s>>>(static_cast<const __nv_bfloat16*>(dz), p.dbias, p.tokens,
                                          p.out, p.accumulate);
  }
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace mimo::kernels
