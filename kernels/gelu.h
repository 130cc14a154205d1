// GELU, forward and backward, elementwise: the exact erf form (x * Phi(x)) or the tanh
// approximation (Megatron's fused bias-GELU, cuBLASLt's GELU epilogue).
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/allocator.h"
#include "kernels/dtype.h"

namespace mimo::kernels {

enum class GeluApproximation {
  kNone,  // Phi(x) exactly (torch's approximate="none").
  kTanh,  // Phi(x) ~ (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3))) / 2 (torch's approximate="tanh").
};

// y = x * Phi(x), Phi(x) = erfc(-x / sqrt(2)) / 2 (accurate in both tails, unlike 1 + erf). x and
// y share `dtype` (bf16 or f32) and may alias; arithmetic is fp32.
struct GeluParams {
  DType dtype = DType::kF32;
  const void* x = nullptr;  // (n,)
  void* y = nullptr;        // (n,)
  int64_t n = 0;
  GeluApproximation approximation = GeluApproximation::kNone;
};

// dx = dy * (Phi(x) + x * phi(x)), phi the standard normal density (for kTanh: the derivative of
// the approximation). dx may alias dy.
struct GeluBackwardParams {
  DType dtype = DType::kF32;
  const void* dy = nullptr;  // (n,)
  const void* x = nullptr;   // (n,) from the forward.
  void* dx = nullptr;        // (n,)
  int64_t n = 0;
  GeluApproximation approximation = GeluApproximation::kNone;
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
