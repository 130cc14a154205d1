// Discovers the CUDA devices this process can use (for worker registration and GPU tests).
#include "kernels/device_info.h"

#include <cuda_runtime_api.h>

#include "absl/status/status.h"
#include "kernels/cuda_status.h"

namespace mimo::kernels {
namespace {

absl::Status Query(CudaDevices* out) {
  int count = 0;
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetDeviceCount(&count));
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop{};
    MIMO_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, i));
    MIMO_CUDA_RETURN_IF_ERROR(cudaSetDevice(i));
    size_t free_bytes = 0, total_bytes = 0;
    MIMO_CUDA_RETURN_IF_ERROR(cudaMemGetInfo(&free_bytes, &total_bytes));
    out->devices.push_back({.index = i,
                            .name = prop.name,
                            .major = prop.major,
                            .minor = prop.minor,
                            .multiprocessors = prop.multiProcessorCount,
                            .total_bytes = static_cast<int64_t>(total_bytes),
                            .free_bytes = static_cast<int64_t>(free_bytes)});
  }
  return absl::OkStatus();
}

}  // namespace

CudaDevices ListCudaDevices() {
  CudaDevices result;
  const absl::Status status = Query(&result);
  if (!status.ok()) {
    result.devices.clear();
    result.unavailable_reason = std::string(status.message());
  } else if (result.devices.empty()) {
    result.unavailable_reason = "the CUDA runtime reports no devices";
  }
  return result;
}

}  // namespace mimo::kernels
