// AdamW with fp32 master weights (Megatron's decoupled weight decay), optionally writing the bf16
// model weights, and the sum of squares that gradient-norm clipping needs.
#pragma once

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "kernels/allocator.h"
#include "kernels/dtype.h"

namespace mimo::kernels {

// For each element, with g = grad * grad_scale (grad_scale carries gradient clipping):
//   m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2
//   master -= lr * (m / (1 - beta1^step) / (sqrt(v / (1 - beta2^step)) + eps) + weight_decay *
//   master)
// and, when `model` is given, model = master rounded to `model_dtype`. fp32 throughout.
struct AdamWParams {
  int64_t n = 0;
  float* master = nullptr;         // (n,) fp32, updated in place.
  float* m = nullptr;              // (n,) fp32 first moment.
  float* v = nullptr;              // (n,) fp32 second moment.
  const void* grad = nullptr;      // (n,) of grad_dtype.
  DType grad_dtype = DType::kF32;  // bf16 or f32.
  void* model = nullptr;           // Optional (n,) of model_dtype.
  DType model_dtype = DType::kBF16;
  float lr = 0.0f;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 0.0f;
  float grad_scale = 1.0f;
  int64_t step = 1;  // 1 for the first update.
};

// InvalidArgument for bad dtypes, a negative n, betas outside [0, 1), a non-positive eps, a
// negative lr or weight decay, a step < 1, a non-finite grad_scale, or a null buffer when n > 0.
absl::Status CheckAdamW(const AdamWParams& p);

// out = sum of x[i]^2 in fp32 over x of `dtype` (bf16 or f32): the squared L2 norm of a gradient
// shard, to be summed over shards and ranks before clipping.
struct SumSquaresParams {
  DType dtype = DType::kF32;
  const void* x = nullptr;  // (n,)
  int64_t n = 0;
  float* out = nullptr;  // (1,), overwritten.
};
absl::Status CheckSumSquares(const SumSquaresParams& p);

// CPU twins: host memory. SumSquares accumulates in double.
absl::Status AdamWCpu(const AdamWParams& p);
absl::Status SumSquaresCpu(const SumSquaresParams& p);

// CUDA: device memory, enqueued on `stream` (a cudaStream_t). SumSquares is deterministic (fixed
// per-block partial sums, then one block sums them in order); it needs a scratch of
// SumSquaresWorkspaceBytes() device bytes.
absl::Status LaunchAdamW(const AdamWParams& p, StreamHandle stream);
size_t SumSquaresWorkspaceBytes();
absl::Status LaunchSumSquares(const SumSquaresParams& p, void* workspace, StreamHandle stream);

}  // namespace mimo::kernels
