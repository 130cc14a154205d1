// Fill: sets every element of a float buffer to one value (used to poison outputs in tests).
#include "kernels/cuda_launch.h"
#include "kernels/cuda_status.h"
#include "kernels/fill.h"

namespace mimo::kernels {
namespace {

__global__ void FillKernel(float* __restrict__ out, int64_t n, float value) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    out[i] = value;
  }
}

}  // namespace

void FillCpu(const FillParams& p) {
  for (int64_t i = 0; i < p.n; ++i) p.out[i] = p.value;
}

absl::Status LaunchFill(const FillParams& p, cudaStream_t stream) {
  if (p.n < 0 || (p.n > 0 && p.out == nullptr)) {
    return absl::InvalidArgumentError("LaunchFill: needs n >= 0 and a buffer");
  }
  if (p.n == 0) return absl::OkStatus();
  FillKernel<<<GridStrideBlocks(p.n), kThreadsPerBlock, 0, stream>>>(p.out, p.n, p.value);
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace mimo::kernels
