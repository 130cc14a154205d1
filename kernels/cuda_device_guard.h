// Makes a CUDA device current for a scope and restores the thread's previous one afterwards.
#pragma once

#include <cuda_runtime_api.h>

namespace mimo::kernels {

// Code may be called from threads working on other devices (a watchdog calling Abort);
// switching and restoring keeps their current device intact. Errors surface at the next CUDA
// call made on the device, so the guard itself reports none.
class CudaDeviceGuard {
 public:
  explicit CudaDeviceGuard(int device) {
    if (cudaGetDevice(&previous_) != cudaSuccess) previous_ = -1;
    if (previous_ != device) cudaSetDevice(device);
  }
  ~CudaDeviceGuard() {
    if (previous_ >= 0) cudaSetDevice(previous_);
  }
  CudaDeviceGuard(const CudaDeviceGuard&) = delete;
  CudaDeviceGuard& operator=(const CudaDeviceGuard&) = delete;

 private:
  int previous_ = -1;
};

}  // namespace mimo::kernels
