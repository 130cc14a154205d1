// For CUDA op tests: device buffers (poisoned on allocation, filled from and read back to the host)
// and a fixture that skips without a GPU; why a multi-GPU test skips.
#pragma once

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cstddef>
#include <string>
#include <vector>

#include "kernels/device_info.h"
#include "kernels/dtype.h"

namespace mimo::kernels::testing {

// `bytes` of device memory, every byte 0xff (NaN in f32 and bf16) so unwritten elements show.
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t bytes) : bytes_(bytes) {
    if (bytes_ == 0) return;
    EXPECT_EQ(cudaMalloc(&ptr_, bytes_), cudaSuccess);
    EXPECT_EQ(cudaMemset(ptr_, 0xff, bytes_), cudaSuccess);
  }
  // A copy of `host` (bytes.size() bytes).
  explicit DeviceBuffer(const std::vector<char>& host) : DeviceBuffer(host.size()) {
    if (bytes_ > 0) {
      EXPECT_EQ(cudaMemcpy(ptr_, host.data(), bytes_, cudaMemcpyHostToDevice), cudaSuccess);
    }
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { cudaFree(ptr_); }

  void* get() const { return ptr_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  // The contents (after a device synchronization).
  std::vector<char> Bytes() const {
    std::vector<char> out(bytes_);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    if (bytes_ > 0) {
      EXPECT_EQ(cudaMemcpy(out.data(), ptr_, bytes_, cudaMemcpyDeviceToHost), cudaSuccess);
    }
    return out;
  }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// Why a test that needs `n` CUDA devices cannot run here ("needs 2 CUDA devices, found 1"), or
// "" when it can.
inline std::string MissingCudaDevices(size_t n) {
  const CudaDevices devices = ListCudaDevices();
  if (devices.devices.size() >= n) return "";
  return "needs " + std::to_string(n) + " CUDA devices, found " +
         std::to_string(devices.devices.size()) +
         (devices.devices.empty() ? ": " + devices.unavailable_reason : "");
}

// A CUDA op test over dtypes: skips, with the reason, where no CUDA device is visible.
class CudaOpTest : public ::testing::TestWithParam<DType> {
 protected:
  void SetUp() override {
    const CudaDevices devices = ListCudaDevices();
    if (devices.devices.empty()) GTEST_SKIP() << "no CUDA device: " << devices.unavailable_reason;
  }
};

}  // namespace mimo::kernels::testing
