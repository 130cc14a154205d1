// LayerNorm over the last dimension, forward and backward: y = (x - mean) / std * weight + bias.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/allocator.h"
#include "kernels/dtype.h"

namespace mimo::kernels {

// Per row r: mean[r] and rstd[r] = 1 / sqrt(var(x[r]) + eps) (population variance). x, weight,
// bias and y share `dtype` (bf16 or f32); arithmetic is fp32.
struct LayerNormParams {
  DType dtype = DType::kF32;
  const void* x = nullptr;       // (rows, cols)
  const void* weight = nullptr;  // (cols,)
  const void* bias = nullptr;    // (cols,)
  void* y = nullptr;             // (rows, cols); may not alias x.
  float* mean = nullptr;         // (rows,) fp32, saved for the backward.
  float* rstd = nullptr;         // (rows,) fp32, saved for the backward.
  int64_t rows = 0;
  int64_t cols = 0;
  float eps = 1e-5f;
};

// With xhat = (x - mean) * rstd and g = dy * weight:
//   dx = rstd * (g - mean(g) - xhat * mean(g * xhat));
//   dweight = sum over rows of dy * xhat; dbias = sum over rows of dy (fp32, overwritten).
struct LayerNormBackwardParams {
  DType dtype = DType::kF32;
  const void* dy = nullptr;      // (rows, cols)
  const void* x = nullptr;       // (rows, cols)
  const void* weight = nullptr;  // (cols,)
  const float* mean = nullptr;   // (rows,) from the forward.
  const float* rstd = nullptr;   // (rows,) from the forward.
  void* dx = nullptr;            // (rows, cols)
  float* dweight = nullptr;      // (cols,) fp32.
  float* dbias = nullptr;        // (cols,) fp32.
  int64_t rows = 0;
  int64_t cols = 0;
  // CUDA only: scratch of at least LayerNormBackwardWorkspaceBytes(rows, cols) device bytes for
  // the per-block partial sums of dweight and dbias (the CPU twin ignores it).
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
};

// InvalidArgument for a dtype other than bf16/f32, a bad shape, a non-positive eps, or a null
// buffer where elements are to be read or written.
absl::Status CheckLayerNorm(const LayerNormParams& p);
absl::Status CheckLayerNormBackward(const LayerNormBackwardParams& p);

// CPU twins: host memory. Row sums and the weight/bias gradients accumulate in double.
absl::Status LayerNormCpu(const LayerNormParams& p);
absl::Status LayerNormBackwardCpu(const LayerNormBackwardParams& p);

// The device scratch LaunchLayerNormBackward needs.
size_t LayerNormBackwardWorkspaceBytes(int64_t rows, int64_t cols);
// CUDA: device memory, enqueued on `stream` (a cudaStream_t). Deterministic: no atomics.
// InvalidArgument (nothing enqueued) when the backward's workspace is missing or too small.
absl::Status LaunchLayerNorm(const LayerNormParams& p, StreamHandle stream);
absl::Status LaunchLayerNormBackward(const LayerNormBackwardParams& p, StreamHandle stream);

}  // namespace mimo::kernels
