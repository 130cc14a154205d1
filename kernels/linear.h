// Linear layer, forward and backward: y = act(x W^T + b) over tokens, with W's and b's gradients
// kept in fp32 (and optionally accumulated over micro-batches, like Megatron's main_grad).
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/allocator.h"
#include "kernels/dtype.h"
#include "kernels/gelu.h"
#include "kernels/gemm.h"

namespace mimo::kernels {

// x, w, bias, y and pre_activation share `dtype` (bf16 or f32); products accumulate in fp32.
struct LinearParams {
  DType dtype = DType::kF32;
  const void* x = nullptr;     // (tokens, in)
  const void* w = nullptr;     // (out, in)
  const void* bias = nullptr;  // Optional (out,).
  void* y = nullptr;           // (tokens, out)
  // GELU (tanh approximation) fused into the GEMM where cuBLASLt can.
  GemmActivation activation = GemmActivation::kNone;
  void* pre_activation = nullptr;  // (tokens, out) with an activation: x W^T + b, for backward.
  int64_t tokens = 0;
  int64_t in = 0;  // > 0
  int64_t out = 0;
};

// dz = dy * act'(pre_activation) (dz = dy without an activation); dx = dz W; dw (+)= dz^T x;
// dbias (+)= the sum of dz over tokens.
struct LinearBackwardParams {
  DType dtype = DType::kF32;  // Of dy, x, w, pre_activation, dpre_activation and dx.
  const void* dy = nullptr;   // (tokens, out)
  const void* x = nullptr;    // (tokens, in) from the forward.
  const void* w = nullptr;    // (out, in)
  GemmActivation activation = GemmActivation::kNone;
  const void* pre_activation = nullptr;  // (tokens, out) with an activation.
  void* dpre_activation = nullptr;       // (tokens, out) with an activation: dz, written.
  void* dx = nullptr;                    // Optional (tokens, in): not computed when null.
  float* dw = nullptr;                   // (out, in) fp32.
  float* dbias = nullptr;                // Optional (out,) fp32.
  // Add to dw and dbias instead of overwriting them.
  bool accumulate = false;
  int64_t tokens = 0;
  int64_t in = 0;  // > 0
  int64_t out = 0;
  // CUDA only, with dbias: scratch of at least LinearBackwardWorkspaceBytes(tokens, out) device
  // bytes (the bias gradient's partial sums over row groups).
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
};

// InvalidArgument for a dtype other than bf16/f32, negative sizes, in == 0 with tokens or out, or
// a null buffer where elements are to be read or written.
absl::Status CheckLinear(const LinearParams& p);
absl::Status CheckLinearBackward(const LinearBackwardParams& p);

// The layer's pieces, the same on both devices (dz is dy, or dpre_activation with an activation):
// y = act(x w^T + bias); dz = dy * act'(pre_activation); dx = dz w; dw (+)= dz^T x.
GemmParams LinearForwardGemm(const LinearParams& p);
GeluBackwardParams LinearActivationBackward(const LinearBackwardParams& p);
GemmParams LinearDxGemm(const LinearBackwardParams& p, const void* dz);
GemmParams LinearDwGemm(const LinearBackwardParams& p, const void* dz);

// CPU twins: host memory.
absl::Status LinearCpu(const LinearParams& p);
absl::Status LinearBackwardCpu(const LinearBackwardParams& p);

// CUDA: device memory, enqueued on `stream` (a cudaStream_t) through `blas` (its device).
absl::Status LaunchLinear(const LinearParams& p, CublasLt& blas, StreamHandle stream);
// The device scratch LaunchLinearBackward needs for a bias gradient over `tokens` rows.
size_t LinearBackwardWorkspaceBytes(int64_t tokens, int64_t out);
// InvalidArgument (before anything is enqueued) when dbias is set and the workspace is too small.
absl::Status LaunchLinearBackward(const LinearBackwardParams& p, CublasLt& blas,
                                  StreamHandle stream);

}  // namespace mimo::kernels
