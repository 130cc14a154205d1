// Device memory on one CUDA device, for CheckCollectives on NCCL communicators.
#pragma once

#include "comm/collective_check.h"

namespace mimo::comm {

// cudaMalloc'd buffers, filled and read back with synchronous copies; the calling thread's current
// device is restored after each call.
class CudaBufferSpace : public BufferSpace {
 public:
  explicit CudaBufferSpace(int cuda_device) : device_(cuda_device) {}

  absl::StatusOr<void*> Allocate(size_t bytes) override;
  void Free(void* buffer) override;
  absl::Status CopyIn(void* buffer, const void* host, size_t bytes) override;
  absl::Status CopyOut(void* host, const void* buffer, size_t bytes) override;

 private:
  const int device_;
};

}  // namespace mimo::comm
