// Elementwise sum, out = a + b: residual connections, and gradients meeting where a tensor feeds
// two branches.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/allocator.h"
#include "kernels/dtype.h"

namespace mimo::kernels {

// a, b and out share `dtype` (bf16, f32, or int32 for counts); a float sum is taken in fp32 and
// rounded once, an int32 one wraps around on overflow. out may alias a or b (in-place
// accumulation).
struct AddParams {
  DType dtype = DType::kF32;
  const void* a = nullptr;  // (n,)
  const void* b = nullptr;  // (n,)
  void* out = nullptr;      // (n,)
  int64_t n = 0;
};

// InvalidArgument for a dtype other than bf16/f32/int32, a negative n, or a null buffer when n > 0.
absl::Status CheckAdd(const AddParams& p);

// CPU twin: host memory.
absl::Status AddCpu(const AddParams& p);

// CUDA: device memory, enqueued on `stream` (a cudaStream_t).
absl::Status LaunchAdd(const AddParams& p, StreamHandle stream);

}  // namespace mimo::kernels
