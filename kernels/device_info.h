// Discovers the CUDA devices this process can use (for worker registration and GPU tests).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

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

// Lists the visible devices; never fails, says why when there are none.
CudaDevices ListCudaDevices();

}  // namespace mimo::kernels
