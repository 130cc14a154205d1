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
// padded length, heads, kv heads, head_dim, mask), an execution plan made on the problem's first
// call and kept (tens to hundreds of ms each, once). When every sequence has max_seqlen tokens
// (total_tokens == num_seqs * max_seqlen) and max_seqlen is a multiple of 128, the tensors are
// plain strided batches; otherwise ragged batches (offsets from cu_seqlens, computed on the device)
// with a padding mask, the sequence count rounded up to a power of two (extra sequences empty) and
// the length to a power of two of at least 128, so that a stream of packed batches shares a few
// plans. max_seqlen must be at least the longest sequence, as LaunchAttention asks (the plain path
// trusts it). Not thread-safe (each call sets the handle's stream): one per thread of work.
class CudnnAttention {
 public:
  // Uses the current CUDA device. Unimplemented before compute capability 9.0 (cuDNN's bf16 flash
  // attention for these graphs needs Hopper), with a cuDNN older than 9.6 (or 9.10.0/9.10.1), or
  // when cuDNN cannot start; the CUDA error when the device cannot be queried.
  static absl::StatusOr<std::unique_ptr<CudnnAttention>> Create();
  ~CudnnAttention();
  CudnnAttention(const CudnnAttention&) = delete;
  CudnnAttention& operator=(const CudnnAttention&) = delete;

  // Whether cuDNN can take the problem by its parameters alone: bf16, head_dim a multiple of 8 up
  // to 128, at least one sequence. (The calls below may still turn a problem down with
  // Unimplemented, and the caller falls back to LaunchAttention: max_seqlen 0, offsets past int32,
  // a ragged batch padded to more than 4 times its tokens and 8192 rows, a graph cuDNN finds no
  // engine for.)
  static bool Handles(DType dtype, int64_t num_seqs, int64_t head_dim);

  // Device scratch the call needs, 256-byte aligned (cuDNN's workspace, the log-sum-exps and dq
  // accumulators in cuDNN's padded layout, the ragged offsets). Makes the problem's plan on first
  // use: Unimplemented when cuDNN does not take it (nothing enqueued), InvalidArgument for bad
  // parameters (CheckAttention's) or a tensor not 16-byte aligned.
  absl::StatusOr<size_t> ForwardWorkspaceBytes(const AttentionParams& p);
  absl::StatusOr<size_t> BackwardWorkspaceBytes(const AttentionBackwardParams& p);

  // Enqueue on `stream` (a cudaStream_t); the same contract as LaunchAttention and
  // LaunchAttentionBackward (dq, dk and dv overwritten; dq summed with atomics, so not bitwise
  // reproducible), plus a workspace of the bytes asked for above. After an error the outputs are
  // undefined. Neither synchronizes with the host, so both can be captured in a CUDA graph once
  // the plan exists (after a *WorkspaceBytes call).
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
