// RMSNorm over the last dimension, forward and backward: y = x / rms(x) * weight.
#pragma once

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "kernels/allocator.h"
#include "kernels/dtype.h"

namespace mimo::kernels {

// Row r of x is x[r*cols .. (r+1)*cols); rstd[r] = 1 / sqrt(mean(x[r]^2) + eps). x, weight and y
// share `dtype` (bf16 or f32); arithmetic is fp32.
struct RmsNormParams {
  DType dtype = DType::kF32;
  const void* x = nullptr;       // (rows, cols)
  const void* weight = nullptr;  // (cols,)
  void* y = nullptr;             // (rows, cols); may not alias x.
  float* rstd = nullptr;         // (rows,) fp32, saved for the backward.
  int64_t rows = 0;
  int64_t cols = 0;
  float eps = 1e-6f;
};

// dx = rstd * (g - xhat * mean(g * xhat)) with g = dy * weight and xhat = x * rstd;
// dweight = sum over rows of dy * xhat, accumulated in fp32 (overwritten, not added to).
struct RmsNormBackwardParams {
  DType dtype = DType::kF32;
  const void* dy = nullptr;      // (rows, cols)
  const void* x = nullptr;       // (rows, cols)
  const void* weight = nullptr;  // (cols,)
  const float* rstd = nullptr;   // (rows,) from the forward.
  void* dx = nullptr;            // (rows, cols)
  float* dweight = nullptr;      // Optional (cols,) fp32.
  int64_t rows = 0;
  int64_t cols = 0;
  // CUDA only, with dweight: scratch of at least RmsNormBackwardWorkspaceBytes(rows, cols) device
  // bytes (per-block partial sums of dweight, added up in a fixed order).
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
};

// InvalidArgument for a dtype other than bf16/f32, negative sizes, zero columns with rows, a
// non-positive eps, or a null buffer where elements are to be read or written.
absl::Status CheckRmsNorm(const RmsNormParams& p);
absl::Status CheckRmsNormBackward(const RmsNormBackwardParams& p);

// CPU twins: host memory. Row sums (and dweight) accumulate in double, elementwise math is fp32.
absl::Status RmsNormCpu(const RmsNormParams& p);
absl::Status RmsNormBackwardCpu(const RmsNormBackwardParams& p);

// CUDA: device memory, enqueued on `stream` (a cudaStream_t). Deterministic (no atomics) for given
// shapes and pointer alignment: 16-byte aligned rows take a vector path, others a scalar one.
absl::Status LaunchRmsNorm(const RmsNormParams& p, StreamHandle stream);
// The device scratch LaunchRmsNormBackward needs to compute dweight.
size_t RmsNormBackwardWorkspaceBytes(int64_t rows, int64_t cols);
// InvalidArgument (before anything is enqueued) when dweight is wanted and the workspace is missing
// or too small.
absl::Status LaunchRmsNormBackward(const RmsNormBackwardParams& p, StreamHandle stream);

}  // namespace mimo::kernels
