// Dropout driven by a counter-based RNG (Philox4x32-10): y = x * keep / (1 - p). The mask is a
// pure function of (seed, substream, kind, offset + element index), so it does not depend on the
// device or the launch shape, and the backward regenerates it instead of storing it.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/allocator.h"
#include "kernels/dtype.h"

namespace mimo::kernels {

// Element i uses 32-bit word (offset + i) % 4 of Philox block b = (offset + i) / 4 with key =
// seed and counter = (b low, b high, substream, kind) -- the block parallel::RngStream(seed,
// kind, substream).Block(b) gives. It is kept when (word >> 8) * 2^-24 >= p. Calls that advance
// `offset` by the elements used draw fresh numbers. The backward is this same op applied to dy
// with the same stream and offset. x and y share `dtype` (bf16 or f32) and may alias.
struct DropoutParams {
  DType dtype = DType::kF32;
  const void* x = nullptr;  // (n,)
  void* y = nullptr;        // (n,)
  int64_t n = 0;
  float p = 0.0f;     // Drop probability, in [0, 1).
  uint64_t seed = 0;  // The rank's seed of the stream's kind (parallel/rng_seeds.h).
  uint32_t substream = 0;
  uint32_t kind = 0;    // parallel::RngStreamKind.
  uint64_t offset = 0;  // Elements of the stream already used.
};

// InvalidArgument for a dtype other than bf16/f32, a negative n, p outside [0, 1), an offset +
// n beyond 2^64, or a null buffer when n > 0.
absl::Status CheckDropout(const DropoutParams& p);

// CPU twin: host memory.
absl::Status DropoutCpu(const DropoutParams& p);

// CUDA: device memory, enqueued on `stream` (a cudaStream_t).
absl::Status LaunchDropout(const DropoutParams& p, StreamHandle stream);

}  // namespace mimo::kernels
