// The CUDA Ops: the kernels of one GPU on one stream, with its caching allocator, cuBLASLt and
// (on Hopper and newer) cuDNN's fused attention.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "kernels/caching_allocator.h"
#include "kernels/gemm.h"
#include "kernels/ops.h"

namespace mimo::kernels {

struct CudaOpsOptions {
  int device = 0;                     // The GPU (an index of the visible devices).
  CachingAllocatorOptions allocator;  // Of the device memory tensors and scratch come from.
  CublasLtOptions blas;               // Of the GEMMs' cuBLASLt context.
  // Bitwise reproducible runs (Megatron's --deterministic-mode): the GEMMs without timed
  // algorithms (sets blas.deterministic) and the attention backward's dq in a fixed order
  // (AttentionBackwardParams::deterministic). Every other kernel here sums in an order fixed by
  // the shapes either way. Slower; off by default.
  bool deterministic = false;
};

// InvalidArgument for a device that does not exist; the CUDA error when the stream, allocator or
// cuBLASLt cannot be created. Ops run on a non-blocking stream of their own.
absl::StatusOr<std::unique_ptr<Ops>> NewCudaOps(const CudaOpsOptions& options = {});

}  // namespace mimo::kernels
