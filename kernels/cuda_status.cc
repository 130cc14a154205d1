// Turns CUDA runtime errors into absl::Status naming the failing call, its location and the error.
#include "kernels/cuda_status.h"

#include "absl/strings/str_cat.h"

namespace mimo::kernels {

absl::Status CudaStatus(cudaError_t error, const char* call, const char* file, int line) {
  if (error == cudaSuccess) return absl::OkStatus();
  const std::string message =
      absl::StrCat(file, ":", line, ": ", call, " failed: ", cudaGetErrorName(error), " (",
                   cudaGetErrorString(error), ")");
  switch (error) {
    case cudaErrorMemoryAllocation:
      return absl::ResourceExhaustedError(message);
    case cudaErrorInvalidValue:
    case cudaErrorInvalidDevice:
      return absl::InvalidArgumentError(message);
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
      return absl::UnavailableError(message);
    default:
      return absl::InternalError(message);
  }
}

absl::Status CheckCudaDevice(int device, const char* what) {
  int count = 0;
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetDeviceCount(&count));
  if (device < 0 || device >= count) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": CUDA device ", device, " does not exist (", count, " visible)"));
  }
  return absl::OkStatus();
}

}  // namespace mimo::kernels
