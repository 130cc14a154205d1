// The operand tables of a pointer-array batched product: one thread per pointer.
#include "absl/strings/str_cat.h"
#include "kernels/cuda_status.h"
#include "kernels/gemm_pointers.h"

namespace mimo::kernels {
namespace {

__global__ void GemmPointersKernel(const GemmPointersParams p) {
  const int i = static_cast<int>(threadIdx.x);
  if (i >= p.count) return;
  p.out[i] = const_cast<void*>(p.a[i]);
  p.out[p.stride + i] = const_cast<void*>(p.b[i]);
  p.out[2 * p.stride + i] = p.d[i];
}

}  // namespace

absl::Status LaunchGemmPointers(const GemmPointersParams& p, cudaStream_t stream) {
  if (p.count < 1 || p.count > kMaxGemmPointers || p.stride < p.count || p.out == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("GemmPointers: count ", p.count, " (needs 1 to ",
                                                   kMaxGemmPointers, "), stride ", p.stride,
                                                   " (needs >= count) or no output table"));
  }
  GemmPointersKernel<<<1, kMaxGemmPointers, 0, stream>>>(p);
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace mimo::kernels
