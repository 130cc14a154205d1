// Device memory on one CUDA device, for CheckCollectives on NCCL communicators.
#include "comm/cuda_buffer_space.h"

#include "kernels/cuda_device_guard.h"
#include "kernels/cuda_status.h"

namespace mimo::comm {

absl::StatusOr<void*> CudaBufferSpace::Allocate(size_t bytes) {
  kernels::CudaDeviceGuard guard(device_);
  void* buffer = nullptr;
  // One byte at least, so that an empty buffer is still a valid, distinct pointer.
  MIMO_CUDA_RETURN_IF_ERROR(cudaMalloc(&buffer, bytes > 0 ? bytes : 1));
  return buffer;
}

void CudaBufferSpace::Free(void* buffer) {
  kernels::CudaDeviceGuard guard(device_);
  cudaFree(buffer);
}

absl::Status CudaBufferSpace::CopyIn(void* buffer, const void* host, size_t bytes) {
  if (bytes == 0) return absl::OkStatus();
  kernels::CudaDeviceGuard guard(device_);
  MIMO_CUDA_RETURN_IF_ERROR(cudaMemcpy(buffer, host, bytes, cudaMemcpyHostToDevice));
  return absl::OkStatus();
}

absl::Status CudaBufferSpace::CopyOut(void* host, const void* buffer, size_t bytes) {
  if (bytes == 0) return absl::OkStatus();
  kernels::CudaDeviceGuard guard(device_);
  MIMO_CUDA_RETURN_IF_ERROR(cudaMemcpy(host, buffer, bytes, cudaMemcpyDeviceToHost));
  return absl::OkStatus();
}

}  // namespace mimo::comm
