// Elementwise dtype conversion between bf16 and fp32 (round to nearest even), e.g. an fp32
// gradient fed to a bf16 GEMM.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/allocator.h"
#include "kernels/dtype.h"

namespace mimo::kernels {

// y[i] = x[i] converted from `from` to `to` (bf16 or f32 each; equal dtypes copy).
struct CastParams {
  DType from = DType::kF32;
  DType to = DType::kBF16;
  const void* x = nullptr;  // (n,)
  void* y = nullptr;        // (n,); may not overlap x unless the dtypes are equal and y == x.
  int64_t n = 0;
};

// InvalidArgument for a dtype other than bf16/f32, a negative n, or a null buffer when n > 0.
absl::Status CheckCast(const CastParams& p);

// CPU twin: host memory.
absl::Status CastCpu(const CastParams& p);

// CUDA: device memory, enqueued on `stream` (a cudaStream_t); bitwise equal to the CPU twin
// except in the payload of NaNs (both stay NaN).
absl::Status LaunchCast(const CastParams& p, StreamHandle stream);

}  // namespace mimo::kernels
