// ContextSplitRuns: the chunk arithmetic of the load-balanced split.
#include "parallel/context_split.h"

#include "absl/strings/str_cat.h"

namespace mimo::parallel {

absl::StatusOr<std::vector<TokenRun>> ContextSplitRuns(absl::Span<const int32_t> lengths, int size,
                                                       int rank) {
  if (size < 1 || rank < 0 || rank >= size) {
    return absl::InvalidArgumentError(
        absl::StrCat("context split: member ", rank, " of a group of ", size));
  }
  std::vector<int64_t> starts;
  int64_t total = 0;
  for (size_t s = 0; s < lengths.size(); ++s) {
    if (lengths[s] < 0 || (size > 1 && lengths[s] % (2 * size) != 0)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "context split: sequence ", s, " has ", lengths[s], " tokens; context parallelism over ",
          size, " ranks needs every sequence padded to a multiple of ", 2 * size));
    }
    starts.push_back(total);
    total += lengths[s];
  }
  std::vector<TokenRun> runs;
  int64_t local = 0;
  auto add = [&](int64_t global, int64_t position, int64_t length) {
    runs.push_back({.local = local, .global = global, .position = position, .length = length});
    local += length;
  };
  if (size == 1) {
    for (size_t s = 0; s < lengths.size(); ++s) add(starts[s], 0, lengths[s]);
    return runs;
  }
  for (const int chunk : {rank, 2 * size - 1 - rank}) {
    for (size_t s = 0; s < lengths.size(); ++s) {
      const int64_t c = lengths[s] / (2 * size);
      add(starts[s] + chunk * c, chunk * c, c);
    }
  }
  return runs;
}

std::vector<int64_t> GlobalTokensOf(absl::Span<const TokenRun> runs) {
  std::vector<int64_t> tokens;
  for (const TokenRun& r : runs) {
    for (int64_t i = 0; i < r.length; ++i) tokens.push_back(r.global + i);
  }
  return tokens;
}

}  // namespace mimo::parallel
