// GELU (the exact, erf form: x * Phi(x)), forward and backward, elementwise.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/allocator.h"
#include "kernels/dtype.h"

namespace mimo::kernels {

// y = x * Phi(x), Phi(x) = erfc(-x / sqrt(2)) / 2 (accurate in both tails, unlike 1 + erf). x and y share `dtype` (bf16 or f32) and
// may alias; arithmetic is fp32.
struct GeluParams {
  DType dtype = DType::kF32;
  const void* x = nullptr;  // (n,)
  void* y = nullptr;        // (n,)
  int64_t n = 0;
};

// dx = dy * (Phi(x) + x * phi(x)), phi the standard normal density. dx may alias dy.
struct GeluBackwardParams {
  DType dtype = DType::kF32;
  const void* dy = nullptr;  // (n,)
  const void* x = nullptr;   // (n,) from the forward.
  void* dx = nullptr;        // (n,)
  int64_t n = 0;
};

// InvalidArgument for a dtype other than bf16/f32, a negative n, or a null buffer when n > 0.
absl::Status CheckGelu(const GeluParams& p);
absl::Status CheckGeluBackward(const GeluBackwardParams& p);

// CPU twins: host memory.
absl::Status GeluCpu(const GeluParams& p);
absl::Status GeluBackwardCpu(const GeluBackwardParams& p);

// CUDA: device memory, enqueued on `stream` (a cudaStream_t).
absl::Status LaunchGelu(const GeluParams& p, StreamHandle stream);
absl::Status LaunchGeluBackward(const GeluBackwardParams& p, StreamHandle stream);

}  // namespace mimo::kernels
