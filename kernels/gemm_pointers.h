// The operand tables of a pointer-array batched cuBLASLt product, written on the device from kernel
// parameters: the write is stream work (captured into a CUDA graph with its values), not a copy
// from host memory that a replay would read again.
#pragma once

#include <cuda_runtime_api.h>

#include "absl/status/status.h"

namespace mimo::kernels {

// Products in one table at most (3 KB of kernel parameters).
inline constexpr int kMaxGemmPointers = 128;

struct GemmPointersParams {
  int count = 0;  // Products, in [1, kMaxGemmPointers].
  // Each product's a, b and d (GemmParams' row-major terms).
  const void* a[kMaxGemmPointers] = {};
  const void* b[kMaxGemmPointers] = {};
  void* d[kMaxGemmPointers] = {};
  // Pointers from one table to the next, >= count: a's table at out, b's at out + stride, d's at
  // out + 2 * stride (device memory).
  int stride = 0;
  void** out = nullptr;
};

// Enqueues the write on `stream`; InvalidArgument for a count out of range, a stride below it or
// no `out`.
absl::Status LaunchGemmPointers(const GemmPointersParams& p, cudaStream_t stream);

}  // namespace mimo::kernels
