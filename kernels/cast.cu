// Cast: the CUDA kernel, one element per thread over a grid-stride loop.
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include "common/status_macros.h"
#include "kernels/cast.h"
#include "kernels/cuda_elements.cuh"
#include "kernels/cuda_launch.h"
#include "kernels/cuda_status.h"

namespace mimo::kernels {
namespace {

template <typename From, typename To>
__global__ void CastKernel(const From* __restrict__ x, To* __restrict__ y, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    Put(y + i, ToFloat(x[i]));
  }
}

template <typename From, typename To>
void Enqueue(const CastParams& p, cudaStream_t s) {
  CastKernel<<<GridStrideBlocks(p.n), kThreadsPerBlock, 0, s>>>(static_cast<const From*>(p.x),
                                                                static_cast<To*>(p.y), p.n);
}

}  // namespace

absl::Status LaunchCast(const CastParams& p, StreamHandle stream) {
  MIMO_RETURN_IF_ERROR(CheckCast(p));
  if (p.n == 0) return absl::OkStatus();
  const auto s = static_cast<cudaStream_t>(stream);
  if (p.from == p.to) {
    if (p.x != p.y) {
      MIMO_CUDA_RETURN_IF_ERROR(
          cudaMemcpyAsync(p.y, p.x, p.n * DTypeSize(p.from), cudaMemcpyDeviceToDevice, s));
    }
    return absl::OkStatus();
  }
  if (p.from == DType::kF32) {
    Enqueue<float, __nv_bfloat16>(p, s);
  } else {
    Enqueue<__nv_bfloat16, float>(p, s);
  }
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace mimo::kernels
