// The caching allocator over cudaMalloc/cudaFree on one device: what tensors on a GPU use.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "kernels/caching_allocator.h"

namespace mimo::kernels {

// A CachingAllocator whose segments are cudaMalloc'd on `device` (the calling thread's current
// device is left as it was). InvalidArgument when the device does not exist.
absl::StatusOr<std::unique_ptr<CachingAllocator>> NewCudaAllocator(
    int device, CachingAllocatorOptions options = {});

}  // namespace mimo::kernels
