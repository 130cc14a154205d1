// Discovers the CUDA devices this process can use (for worker registration and GPU tests).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace mimo::kernels {

struct CudaDevice {
  int index = 0;             // CUDA runtime device ordinal.
  std::string name;          // e.g. "NVIDIA H100 80GB HBM3".
  int major = 0, minor = 0;  // Compute capability.
  int multiprocessors = 0;   // SM count.
  int64_t total_bytes = 0;   // Device memory.
  int64_t free_bytes = 0;    // Free device memory when listed.
};

struct CudaDevices {
  std::vector<CudaDevice> devices;
  // Why `devices` is empty: no driver, no device, or an error while querying one.
  std::string unavailable_reason;
};

// Lists the visible devices; never fails, says why when there are none. Creates a context on
// every device (to read free memory).
CudaDevices ListCudaDevices();

// The visible devices (CUDA_VISIBLE_DEVICES applies); 0 without a driver or device.
int CudaDeviceCount();

// One device, creating a context on it alone. FailedPrecondition naming the index and the
// number visible when it does not exist; the runtime's error (with the call) otherwise.
absl::StatusOr<CudaDevice> DescribeCudaDevice(int index);

}  // namespace mimo::kernels
