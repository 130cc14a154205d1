// SwiGLU, forward and backward: y = silu(gate) * up, with x = [gate | up] along the last dimension
// (Megatron's layout for the fused FC1 output).
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/allocator.h"
#include "kernels/dtype.h"

namespace mimo::kernels {

// silu(a) = a * sigmoid(a). x, y (and dy, dx) share `dtype` (bf16 or f32); arithmetic is fp32.
struct SwigluParams {
  DType dtype = DType::kF32;
  const void* x = nullptr;  // (rows, 2*cols): gate in [0, cols), up in [cols, 2*cols).
  void* y = nullptr;        // (rows, cols); may not alias x.
  int64_t rows = 0;
  int64_t cols = 0;
};

// dgate = dy * up * silu'(gate), with silu'(a) = sigmoid(a) * (1 + a * (1 - sigmoid(a)));
// dup = dy * silu(gate).
struct SwigluBackwardParams {
  DType dtype = DType::kF32;
  const void* dy = nullptr;  // (rows, cols)
  const void* x = nullptr;   // (rows, 2*cols) from the forward.
  void* dx = nullptr;        // (rows, 2*cols); may not alias x or dy.
  int64_t rows = 0;
  int64_t cols = 0;
};

// InvalidArgument for a dtype other than bf16/f32, negative sizes, or a null buffer where
// elements are to be read or written.
absl::Status CheckSwiglu(const SwigluParams& p);
absl::Status CheckSwigluBackward(const SwigluBackwardParams& p);

// CPU twins: host memory.
absl::Status SwigluCpu(const SwigluParams& p);
absl::Status SwigluBackwardCpu(const SwigluBackwardParams& p);

// CUDA: device memory, enqueued on `stream` (a cudaStream_t). sigmoid comes from the
// multiprocessor's ex2 and reciprocal approximations (relative error a few 1e-7). Also
// InvalidArgument for rows of more than 2^31 - 1 elements.
absl::Status LaunchSwiglu(const SwigluParams& p, StreamHandle stream);
absl::Status LaunchSwigluBackward(const SwigluBackwardParams& p, StreamHandle stream);

}  // namespace mimo::kernels
