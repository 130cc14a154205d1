// Attention forward and backward through cuDNN's fused flash attention (bf16 on Hopper and newer)
// for the packed layout and log-sum-exps of kernels/attention.h.
#pragma once

#include <cstddef>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/allocator.h"
#include "kernels/attention.h"

namespace mimo::kernels {

// cuDNN's SDPA graphs on one device: a cuDNN handle and, per problem (direction, sequences,
// longest sequence, heads, kv heads, head_dim, mask), an execution plan made on the problem's
// first call and kept (a few hundred ms each, once). When every sequence has max_seqlen tokens
// (total_tokens == num_seqs * max_seqlen) the tensors are described with plain strides; otherwise
// as ragged batches (offsets from cu_seqlens, computed on the device) with a padding mask, and the
// padded length rounded up to a power of two (at least 64) so that a stream of packed batches
// shares a few plans. Not thread-safe: one per stream of work, like CublasLt.
class CudnnAttention {
 public:
  // Uses the current CUDA device. Unavailable without one; Unimplemented before compute
  // capability 9.0 (cuDNN's bf16 flash attention for these graphs needs Hopper).
  static absl::StatusOr<std::unique_ptr<CudnnAttention>> Create();
  ~CudnnAttention();
  CudnnAttention(const CudnnAttention&) = delete;
  CudnnAttention& operator=(const CudnnAttention&) = delete;

  // Whether cuDNN can take the problem by its parameters alone: bf16, head_dim a multiple of 8 up
  // to 128, at least one sequence. (cuDNN may still turn a shape down: the first call of each
  // problem says so with Unimplemented, and the caller falls back to LaunchAttention.)
  static bool Handles(DType dtype, int64_t num_seqs, int64_t head_dim);

  // Device scratch the call needs (cuDNN's workspace, the log-sum-exps in cuDNN's layout and the
  // ragged offsets). Makes the problem's plan on first use: Unimplemented when cuDNN has no engine
  // for it (nothing enqueued), InvalidArgument for bad parameters (CheckAttention's).
  absl::StatusOr<size_t> ForwardWorkspaceBytes(const AttentionParams& p);
  absl::StatusOr<size_t> BackwardWorkspaceBytes(const AttentionBackwardParams& p);

  // Enqueue on `stream` (a cudaStream_t); the same contract as LaunchAttention and
  // LaunchAttentionBackward (dq, dk and dv overwritten; dq summed with atomics, so not bitwise
  // reproducible), plus a workspace of the bytes asked for above.
  absl::Status Forward(const AttentionParams& p, void* workspace, size_t workspace_bytes,
                       StreamHandle stream);
  absl::Status Backward(const AttentionBackwardParams& p, void* workspace, size_t workspace_bytes,
                        StreamHandle stream);

  // Plans made so far.
  size_t cached_plans() const;

 private:
  struct State;
  explicit CudnnAttention(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace mimo::kernels
