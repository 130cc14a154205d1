// Linear layer on the GPU: the GEMMs through cuBLASLt, GELU's backward, and deterministic column
// sums for the bias gradient (in two stages over many rows).
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cuda_column_sum.cuh"
#include "kernels/cuda_device_guard.h"
#include "kernels/cuda_status.h"
#include "kernels/gelu.h"
#include "kernels/linear.h"

namespace mimo::kernels {

absl::Status LaunchLinear(const LinearParams& p, CublasLt& blas, StreamHandle stream) {
  MIMO_RETURN_IF_ERROR(CheckLinear(p));
  CudaDeviceGuard guard(blas.device());
  return blas.Gemm(LinearForwardGemm(p), stream);
}

size_t LinearBackwardWorkspaceBytes(int64_t tokens, int64_t out) {
  return ManyRowColumnSumWorkspaceBytes(tokens, out);
}

absl::Status LaunchLinearBackward(const LinearBackwardParams& p, CublasLt& blas,
                                  StreamHandle stream) {
  MIMO_RETURN_IF_ERROR(CheckLinearBackward(p));
  const size_t needed =
      p.dbias != nullptr ? LinearBackwardWorkspaceBytes(p.tokens, p.out) : size_t{0};
  if (needed > 0 && (p.workspace == nullptr || p.workspace_bytes < needed)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "LinearBackward: the workspace has ", p.workspace_bytes, " bytes, a bias gradient over ",
        p.tokens, " rows of ", p.out, " needs ", needed, " (LinearBackwardWorkspaceBytes)"));
  }
  CudaDeviceGuard guard(blas.device());
  const void* dz = p.dy;  // (tokens, out)
  if (p.activation != GemmActivation::kNone) {
    MIMO_RETURN_IF_ERROR(LaunchGeluBackward(LinearActivationBackward(p), stream));
    dz = p.dpre_activation;
  }
  if (p.dx != nullptr) MIMO_RETURN_IF_ERROR(blas.Gemm(LinearDxGemm(p, dz), stream));
  MIMO_RETURN_IF_ERROR(blas.Gemm(LinearDwGemm(p, dz), stream));
  if (p.dbias == nullptr || p.out == 0) return absl::OkStatus();
  const auto s = static_cast<cudaStream_t>(stream);
  auto* partial = static_cast<float*>(p.workspace);
  if (p.dtype == DType::kF32) {
    EnqueueManyRowColumnSum(static_cast<const float*>(dz), p.dbias, p.tokens, p.out, p.accumulate,
                            partial, s);
  } else {
    EnqueueManyRowColumnSum(static_cast<const __nv_bfloat16*>(dz), p.dbias, p.tokens, p.out,
                            p.accumulate, partial, s);
  }
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace mimo::kernels
