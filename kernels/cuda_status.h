// Turns CUDA runtime errors into absl::Status naming the failing call, its location and the error.
#pragma once

#include <cuda_runtime_api.h>

#include "absl/status/status.h"
#include "common/status_macros.h"

namespace mimo::kernels {

// OK for cudaSuccess; otherwise an error whose message reads
// "file.cc:42: cudaMalloc(&p, n) failed: cudaErrorMemoryAllocation (out of memory)".
absl::Status CudaStatus(cudaError_t error, const char* call, const char* file, int line);

// InvalidArgument naming `what` unless `device` is a CUDA device this process sees; the runtime's
// error when it cannot count them.
absl::Status CheckCudaDevice(int device, const char* what);

}  // namespace mimo::kernels

// Returns from the enclosing function with a Status if the CUDA runtime call fails.
#define MIMO_CUDA_RETURN_IF_ERROR(call) \
  MIMO_RETURN_IF_ERROR(::mimo::kernels::CudaStatus((call), #call, __FILE__, __LINE__))
