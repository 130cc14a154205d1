// Launch shapes shared by the kernels: grid-stride grids, and the row-per-block grid limit.
#pragma once

#include <algorithm>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace mimo::kernels {

// Threads per block of every kernel here.
inline constexpr int kThreadsPerBlock = 256;

// Blocks for a grid-stride loop over `n` items: enough to cover them, at most 65536, at least 1.
inline unsigned GridStrideBlocks(int64_t n) {
  return static_cast<unsigned>(std::max<int64_t>(
      1, std::min<int64_t>((n + kThreadsPerBlock - 1) / kThreadsPerBlock, 65536)));
}

// InvalidArgument when `rows` (one block each) exceed the grid's 2^31 - 1 blocks.
inline absl::Status CheckRowsFitTheGrid(const char* op, int64_t rows) {
  if (rows > 0x7fffffff) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": ", rows, " rows exceed the grid limit of 2^31 - 1"));
  }
  return absl::OkStatus();
}

}  // namespace mimo::kernels
