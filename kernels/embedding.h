// Embedding lookup, forward and backward: out[t] = table[ids[t]]; the table's gradient sums the
// rows of dout that share an id, deterministically (duplicate ids are the common case).
#pragma once

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "kernels/allocator.h"
#include "kernels/dtype.h"

namespace mimo::kernels {

// table and out share `dtype` (bf16 or f32). An id outside [0, vocab) gives a row of zeros and,
// when `bad_ids` is given (an int in the same memory as the ids), is counted there (added to).
struct EmbeddingParams {
  DType dtype = DType::kF32;
  const void* table = nullptr;   // (vocab, dim)
  const int32_t* ids = nullptr;  // (tokens,)
  void* out = nullptr;           // (tokens, dim)
  int32_t* bad_ids = nullptr;    // Optional (1,).
  int64_t vocab = 0;
  int64_t tokens = 0;
  int64_t dim = 0;
  int64_t first_id = 0;  // >= 0.
};

// Sorted positions per chunk of the backward's sums (see EmbeddingBackwardParams).
inline constexpr int64_t kEmbeddingBackwardChunk = 256;

// dtable[v - first_id] (+)= sum over t with ids[t] == v of dout[t], in fp32, the same additions
// in the same order whatever the device (so results are bitwise reproducible): the (id, t) pairs
// sorted, id's run of sorted positions is cut where a chunk of kEmbeddingBackwardChunk positions
// ends, each piece summed from 0 in ascending t, and the pieces added to dtable in order. Ids
// outside [first_id, first_id + vocab) are skipped.
struct EmbeddingBackwardParams {
  DType dtype = DType::kF32;     // Of dout.
  const void* dout = nullptr;    // (tokens, dim)
  const int32_t* ids = nullptr;  // (tokens,)
  float* dtable = nullptr;       // (vocab, dim) fp32.
  int64_t vocab = 0;
  int64_t tokens = 0;
  int64_t dim = 0;
  int64_t first_id = 0;  // >= 0: dtable's rows are ids [first_id, first_id + vocab).
  // Add to dtable (gradient accumulation over micro-batches) instead of overwriting it (rows no id
  // names become zero).
  bool accumulate = false;
  // CUDA only: scratch of at least EmbeddingBackwardWorkspaceBytes(tokens, dim) device bytes.
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
};

// InvalidArgument for a dtype other than bf16/f32, negative sizes, more than 2^31 - 1 tokens or
// vocabulary rows, or a null buffer where elements are to be read or written.
absl::Status CheckEmbedding(const EmbeddingParams& p);
absl::Status CheckEmbeddingBackward(const EmbeddingBackwardParams& p);

// CPU twins: host memory.
absl::Status EmbeddingCpu(const EmbeddingParams& p);
absl::Status EmbeddingBackwardCpu(const EmbeddingBackwardParams& p);

// CUDA: device memory, enqueued on `stream` (a cudaStream_t).
absl::Status LaunchEmbedding(const EmbeddingParams& p, StreamHandle stream);
// The device scratch LaunchEmbeddingBackward needs for `tokens` ids and rows of `dim` (a sort of
// the ids and two fp32 rows per chunk).
size_t EmbeddingBackwardWorkspaceBytes(int64_t tokens, int64_t dim);
// InvalidArgument (before anything is enqueued) when the workspace is missing or too small.
absl::Status LaunchEmbeddingBackward(const EmbeddingBackwardParams& p, StreamHandle stream);

}  // namespace mimo::kernels
