// Discovers the CUDA devices this process can use (for worker registration and GPU tests).
#include "kernels/device_info.h"

#include <cuda_runtime_api.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/cuda_status.h"

namespace mimo::kernels {
namespace {

absl::Status Query(CudaDevices* out) {
  int count = 0;
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetDeviceCount(&count));
  for (int i = 0; i < count; ++i) {
    absl::StatusOr<CudaDevice> device = DescribeCudaDevice(i);
    if (!device.ok()) return device.status();
    out->devices.push_back(*std::move(device));
  }
  return absl::OkStatus();
}

}  // namespace

int CudaDeviceCount() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // Leave no error behind.
    return 0;
  }
  return count;
}

absl::StatusOr<CudaDevice> DescribeCudaDevice(int index) {
  int count = 0;
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetDeviceCount(&count));
  if (index < 0 || index >= count) {
    return absl::FailedPreconditionError(absl::StrCat("CUDA device ", index,
                                                      " does not exist: this process sees ", count,
                                                      count == 1 ? " device" : " devices"));
  }
  cudaDeviceProp prop{};
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, index));
  int previous = 0;
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetDevice(&previous));
  size_t free_bytes = 0, total_bytes = 0;
  absl::Status status =
      CudaStatus(cudaSetDevice(index), "cudaSetDevice(index)", __FILE__, __LINE__);
  if (status.ok()) {
    status = CudaStatus(cudaMemGetInfo(&free_bytes, &total_bytes),
                        "cudaMemGetInfo(&free_bytes, &total_bytes)", __FILE__, __LINE__);
  }
  cudaSetDevice(previous);
  MIMO_RETURN_IF_ERROR(status);
  return CudaDevice{.index = index,
                    .name = prop.name,
                    .major = prop.major,
                    .minor = prop.minor,
                    .multiprocessors = prop.multiProcessorCount,
                    .total_bytes = static_cast<int64_t>(total_bytes),
                    .free_bytes = static_cast<int64_t>(free_bytes)};
}

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
