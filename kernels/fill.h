// Fill: sets every element of a float buffer to one value (used to poison outputs in tests).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"

namespace mimo::kernels {

struct FillParams {
  float* out = nullptr;  // (n,) device memory.
  int64_t n = 0;         // Elements; 0 is a no-op.
  float value = 0.0f;
};

// CPU twin: `out` is host memory.
void FillCpu(const FillParams& p);

// Enqueues the fill on `stream`; fails on a bad argument or a launch error.
absl::Status LaunchFill(const FillParams& p, cudaStream_t stream);

}  // namespace mimo::kernels
