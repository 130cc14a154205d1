// Softmax cross-entropy over a vocabulary seen one chunk of logits at a time, so that no more than
// one chunk of logits exists at once (the chunk's logits are recomputed for the backward). Per
// token a running state (max, sum of exp(logit - max), target logit) is folded over the chunks.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/allocator.h"
#include "kernels/dtype.h"

namespace mimo::kernels {

// The running state of `tokens` tokens, fp32, each (tokens,). Start from CrossEntropyInit.
struct CrossEntropyState {
  float* max = nullptr;           // Largest logit so far (-inf at first).
  float* sum = nullptr;           // Sum of exp(logit - max) so far.
  float* target_logit = nullptr;  // The target's logit, once its chunk was seen.
};

// One chunk: logits of vocabulary entries [vocab_offset, vocab_offset + chunk). A target < 0 is
// ignored (no loss, no gradient); other targets must be < the vocabulary size.
struct CrossEntropyChunkParams {
  DType dtype = DType::kF32;
  const void* logits = nullptr;      // (tokens, chunk)
  const int32_t* targets = nullptr;  // (tokens,)
  int64_t tokens = 0;
  int64_t chunk = 0;
  int64_t vocab_offset = 0;
  CrossEntropyState state;
};

// After the last chunk: loss[t] = log(sum) + max - target_logit (0 for ignored targets), and
// lse[t] = log(sum) + max for the backward.
struct CrossEntropyFinishParams {
  const int32_t* targets = nullptr;  // (tokens,)
  int64_t tokens = 0;
  CrossEntropyState state;
  float* loss = nullptr;  // (tokens,)
  float* lse = nullptr;   // (tokens,)
};

// dlogits[t, c] = dloss[t] * (exp(logit - lse[t]) - [targets[t] == vocab_offset + c]); zero for
// ignored targets. dlogits may alias logits.
struct CrossEntropyBackwardParams {
  DType dtype = DType::kF32;
  const void* logits = nullptr;      // (tokens, chunk), recomputed.
  const int32_t* targets = nullptr;  // (tokens,)
  const float* lse = nullptr;        // (tokens,)
  const float* dloss = nullptr;      // (tokens,)
  void* dlogits = nullptr;           // (tokens, chunk)
  int64_t tokens = 0;
  int64_t chunk = 0;
  int64_t vocab_offset = 0;
};

// InvalidArgument for a dtype other than bf16/f32, negative sizes, a negative offset, or a null
// buffer where elements are to be read or written.
absl::Status CheckCrossEntropyChunk(const CrossEntropyChunkParams& p);
absl::Status CheckCrossEntropyBackward(const CrossEntropyBackwardParams& p);

// CPU twins: host memory.
absl::Status CrossEntropyInitCpu(const CrossEntropyState& s, int64_t tokens);
absl::Status CrossEntropyChunkCpu(const CrossEntropyChunkParams& p);
absl::Status CrossEntropyFinishCpu(const CrossEntropyFinishParams& p);
absl::Status CrossEntropyBackwardCpu(const CrossEntropyBackwardParams& p);

// CUDA: device memory, enqueued on `stream` (a cudaStream_t). One block per token.
absl::Status LaunchCrossEntropyInit(const CrossEntropyState& s, int64_t tokens,
                                    StreamHandle stream);
absl::Status LaunchCrossEntropyChunk(const CrossEntropyChunkParams& p, StreamHandle stream);
absl::Status LaunchCrossEntropyFinish(const CrossEntropyFinishParams& p, StreamHandle stream);
absl::Status LaunchCrossEntropyBackward(const CrossEntropyBackwardParams& p, StreamHandle stream);

}  // namespace mimo::kernels
