// Token permutation for MoE experts: the (token, choice) pairs grouped by expert into one
// expert-contiguous buffer, each expert's rows padded with zero rows to a multiple of `align`
// (what a grouped GEMM wants), and back again weighted by the router's combine weights; forward
// and backward.
#pragma once

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "kernels/allocator.h"
#include "kernels/dtype.h"

namespace mimo::kernels {

// Rows a permuted buffer needs for any routing: tokens * top_k + experts * (align - 1).
int64_t MoePermuteCapacity(int64_t tokens, int64_t top_k, int64_t experts, int64_t align);

// Where the pairs go. Expert e's rows start at offsets[e] = the sum over e' < e of
// RoundUp(count[e'], align), with count[e] its pairs; within an expert, pairs keep their
// (token, choice) order. pair_of_row is the inverse: the pair t * top_k + j in each row, -1 in
// padding rows and the rows past offsets[experts]. A pair whose expert is -1 goes nowhere (a
// padding token, a choice dropped over capacity): its row is -1, so it adds nothing to the
// unpermuted output and gets no gradient.
struct MoePermuteMapParams {
  const int32_t* indices = nullptr;  // (tokens, top_k): experts in [0, experts), or -1.
  int32_t* rows = nullptr;           // (tokens, top_k)
  int32_t* offsets = nullptr;        // (experts + 1,)
  int32_t* pair_of_row = nullptr;    // (capacity,)
  int64_t tokens = 0;
  int64_t top_k = 0;     // >= 1
  int64_t experts = 0;   // In [1, 1024].
  int64_t align = 1;     // >= 1
  int64_t capacity = 0;  // At least MoePermuteCapacity(tokens, top_k, experts, align).
  // CUDA only: scratch of at least MoePermuteMapWorkspaceBytes(tokens * top_k, experts) bytes.
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
};

// out[r] = x[pair_of_row[r] / top_k], or zeros where pair_of_row[r] < 0. x and out share `dtype`.
// With top_k 1 it is a row gather (capacity rows from any rows of x).
struct MoePermuteParams {
  DType dtype = DType::kF32;
  const void* x = nullptr;               // (tokens, hidden)
  const int32_t* pair_of_row = nullptr;  // (capacity,) from the map.
  // Optional (tokens, top_k): the map's rows, pair_of_row's inverse. With it the CUDA kernel reads
  // each token's row of x once and writes it to its top_k rows (a row-by-row gather rereads x
  // top_k times, mostly from DRAM once x outgrows L2); the result is the same.
  const int32_t* rows = nullptr;
  void* out = nullptr;  // (capacity, hidden)
  int64_t tokens = 0;
  int64_t top_k = 0;
  int64_t hidden = 0;
  int64_t capacity = 0;
};

// The permutation's backward: dx[t] = sum over j of dout[rows[t, j]] (fp32, in choice order).
struct MoePermuteBackwardParams {
  DType dtype = DType::kF32;
  const void* dout = nullptr;     // (capacity, hidden)
  const int32_t* rows = nullptr;  // (tokens, top_k) from the map.
  void* dx = nullptr;             // (tokens, hidden)
  int64_t tokens = 0;
  int64_t top_k = 0;
  int64_t hidden = 0;
};

// y[t] = sum over j of probs[t, j] * h[rows[t, j]] (fp32, in choice order, rounded once).
struct MoeUnpermuteParams {
  DType dtype = DType::kF32;      // Of h and y.
  const void* h = nullptr;        // (capacity, hidden): the experts' outputs.
  const int32_t* rows = nullptr;  // (tokens, top_k)
  const float* probs = nullptr;   // (tokens, top_k) combine weights.
  void* y = nullptr;              // (tokens, hidden)
  int64_t tokens = 0;
  int64_t top_k = 0;
  int64_t hidden = 0;
};

// dh[r] = probs[p] * dy[p / top_k] for p = pair_of_row[r] (zeros in padding rows);
// dprobs[t, j] = dot(dy[t], h[rows[t, j]]) in fp32. rows and pair_of_row are the map's, each the
// other's inverse (the CUDA kernel fills dh through rows and zeros the rows pair_of_row leaves).
struct MoeUnpermuteBackwardParams {
  DType dtype = DType::kF32;             // Of dy, h and dh.
  const void* dy = nullptr;              // (tokens, hidden)
  const void* h = nullptr;               // (capacity, hidden) from the forward.
  const int32_t* rows = nullptr;         // (tokens, top_k)
  const int32_t* pair_of_row = nullptr;  // (capacity,)
  const float* probs = nullptr;          // (tokens, top_k)
  void* dh = nullptr;                    // (capacity, hidden)
  float* dprobs = nullptr;               // (tokens, top_k)
  int64_t tokens = 0;
  int64_t top_k = 0;
  int64_t hidden = 0;
  int64_t capacity = 0;
};

absl::Status CheckMoePermuteMap(const MoePermuteMapParams& p);
absl::Status CheckMoePermute(const MoePermuteParams& p);
absl::Status CheckMoePermuteBackward(const MoePermuteBackwardParams& p);
absl::Status CheckMoeUnpermute(const MoeUnpermuteParams& p);
absl::Status CheckMoeUnpermuteBackward(const MoeUnpermuteBackwardParams& p);

// CPU twins: host memory. The map also rejects an expert index out of range (other than -1).
absl::Status MoePermuteMapCpu(const MoePermuteMapParams& p);
absl::Status MoePermuteCpu(const MoePermuteParams& p);
absl::Status MoePermuteBackwardCpu(const MoePermuteBackwardParams& p);
absl::Status MoeUnpermuteCpu(const MoeUnpermuteParams& p);
absl::Status MoeUnpermuteBackwardCpu(const MoeUnpermuteBackwardParams& p);

// CUDA: device memory, enqueued on `stream` (a cudaStream_t); no host synchronization, results
// bitwise equal to the CPU twins' (the map is integer arithmetic, every sum runs in the same
// order). Expert indices are not checked on the device: out-of-range ones are skipped.
size_t MoePermuteMapWorkspaceBytes(int64_t pairs, int64_t experts);
absl::Status LaunchMoePermuteMap(const MoePermuteMapParams& p, StreamHandle stream);
absl::Status LaunchMoePermute(const MoePermuteParams& p, StreamHandle stream);
absl::Status LaunchMoePermuteBackward(const MoePermuteBackwardParams& p, StreamHandle stream);
absl::Status LaunchMoeUnpermute(const MoeUnpermuteParams& p, StreamHandle stream);
absl::Status LaunchMoeUnpermuteBackward(const MoeUnpermuteBackwardParams& p, StreamHandle stream);

}  // namespace mimo::kernels
