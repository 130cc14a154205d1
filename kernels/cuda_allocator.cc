// The caching allocator over cudaMalloc/cudaFree on one device: what tensors on a GPU use.
#include "kernels/cuda_allocator.h"

#include <cuda_runtime_api.h>

#include "absl/strings/str_cat.h"
#include "kernels/cuda_device_guard.h"
#include "kernels/cuda_status.h"

namespace mimo::kernels {

absl::StatusOr<std::unique_ptr<CachingAllocator>> NewCudaAllocator(
    int device, CachingAllocatorOptions options) {
  MIMO_RETURN_IF_ERROR(CheckCudaDevice(device, "NewCudaAllocator"));
  SegmentSource source;
  source.allocate = [device](size_t bytes) -> absl::StatusOr<void*> {
    CudaDeviceGuard guard(device);
    void* ptr = nullptr;
    const cudaError_t error = cudaMalloc(&ptr, bytes);
    if (error != cudaSuccess) {
      cudaGetLastError();  // cudaErrorMemoryAllocation is not sticky; clear it.
      return CudaStatus(error, "cudaMalloc(&ptr, bytes)", __FILE__, __LINE__);
    }
    return ptr;
  };
  source.free = [device](void* ptr) {
    CudaDeviceGuard guard(device);
    cudaFree(ptr);
  };
  return std::make_unique<CachingAllocator>(Device::Cuda(device), std::move(source), options);
}

}  // namespace mimo::kernels
