// How packed sequences split over a context-parallel group: Megatron's load-balanced split for
// causal attention, each sequence in 2 cp chunks of which member r holds chunks r and 2cp-1-r.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace mimo::parallel {

// Rows [local, local + length) of a member's tokens are tokens [global, global + length) of the
// packed micro-batch (positions [position, position + length) of their sequence).
struct TokenRun {
  int64_t local = 0;
  int64_t global = 0;
  int64_t position = 0;
  int64_t length = 0;

  bool operator==(const TokenRun&) const = default;
};

// The runs member `rank` of a context-parallel group of `size` holds of sequences of `lengths`
// (packed one after the other), in its row order: with size 1 each sequence whole; otherwise
// each sequence's chunk `rank` (of 2 size equal chunks), then each sequence's chunk 2 size - 1 -
// rank, so that the member's rows are two regions of equal shape (the same chunk lengths in the
// same order), and with causal masks every member does the same attention work. InvalidArgument
// for size < 1, a rank outside [0, size), a negative length, or (size > 1) a length that is not
// a multiple of 2 size (pad each sequence first; MicroBatchOptions::sequence_multiple).
absl::StatusOr<std::vector<TokenRun>> ContextSplitRuns(absl::Span<const int32_t> lengths, int size,
                                                       int rank);

// The global token of each local row of `runs`: (rows,).
std::vector<int64_t> GlobalTokensOf(absl::Span<const TokenRun> runs);

}  // namespace mimo::parallel
