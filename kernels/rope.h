// Rotary position embedding (RoPE), forward and backward, on packed tokens with per-token
// positions (so THD-packed sequences restart their positions), in Megatron's non-interleaved
// layout: the rotated part of each head is [first half | second half].
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/allocator.h"
#include "kernels/dtype.h"

namespace mimo::kernels {

// For token t at position p, head h, and i < rotary_dim / 2, with theta = p * base^(-2i /
// rotary_dim) (computed in double), a = x[t, h, i] and b = x[t, h, i + rotary_dim / 2]:
//   forward:  y = (a cos - b sin, b cos + a sin)
//   backward: the transpose, i.e. the same with sin negated (dx from dy).
// Elements at rotary_dim <= d < head_dim pass through unchanged. x and y share `dtype` (bf16 or
// f32) and may alias (in place).
struct RopeParams {
  DType dtype = DType::kF32;
  const void* x = nullptr;             // (tokens, heads, head_dim)
  void* y = nullptr;                   // (tokens, heads, head_dim)
  const int32_t* positions = nullptr;  // (tokens,), each >= 0.
  int64_t tokens = 0;
  int64_t heads = 0;
  int64_t head_dim = 0;
  int64_t rotary_dim = 0;  // Even, in [2, head_dim].
  double base = 10000.0;   // Positive.
  bool backward = false;   // Rotate by -theta (the gradient of the forward).
};

// InvalidArgument for a dtype other than bf16/f32, negative sizes, an odd or out-of-range
// rotary_dim, a non-positive base, or a null buffer where elements are to be read or written.
absl::Status CheckRope(const RopeParams& p);

// CPU twin: host memory; also InvalidArgument for a negative position.
absl::Status RopeCpu(const RopeParams& p);

// CUDA: device memory, enqueued on `stream` (a cudaStream_t). theta is formed and reduced to
// [-pi, pi] in double; its cos and sin come from the multiprocessor's float approximations
// (absolute error below 5e-7). Positions are not checked on the device: a negative one rotates
// backwards.
absl::Status LaunchRope(const RopeParams& p, StreamHandle stream);

}  // namespace mimo::kernels
