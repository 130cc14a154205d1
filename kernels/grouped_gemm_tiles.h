// The grouped GEMM over row blocks (kVariableRows) as one pointer-array batched cuBLASLt product:
// the rows cut into tiles of row_multiple rows, each inside one group, their operand tables
// written on the device from the offsets (no host synchronization: a CUDA graph can capture it).
#pragma once

#include <cstddef>

#include "absl/status/status.h"
#include "kernels/allocator.h"
#include "kernels/gemm.h"
#include "kernels/grouped_gemm.h"

namespace mimo::kernels {

// Whether `p` (already checked) runs as tiles: kVariableRows with bf16 a and b, a row_multiple of
// 64 or more, k and n multiples of 8 (k > 0), a, b and d 16-byte aligned, and at least two tiles
// (one is a plain product).
bool GroupedGemmTilesApply(const GroupedGemmParams& p);

// Device scratch the launch needs: the three operand tables and a spare output tile.
size_t GroupedGemmTilesWorkspaceBytes(const GroupedGemmParams& p);

// Enqueues `p` on `stream` through `blas`: tile i (rows [i, i + 1) x row_multiple) of a group g
// is the product a[tile] . op(b[g]) into d[tile]; tiles in no group (before the first offset or
// past the last) all write the spare tile in `workspace` (garbage nobody reads), so their rows of
// d are left as they are. Offsets that break the row_multiple promise leave a tile that crosses
// a group's end unwritten (where the grouped kernel would compute it), never memory outside the
// buffers. `workspace`: at least GroupedGemmTilesWorkspaceBytes, 256-byte aligned, until the
// work is done. InvalidArgument for parameters that GroupedGemmTilesApply refuses;
// FailedPrecondition when cuBLASLt has no pointer-array algorithm for the tile's shape (only the
// tables were written: run the grouped kernel instead); the error of a cuBLASLt run that fails.
absl::Status LaunchGroupedGemmTiles(const GroupedGemmParams& p, void* workspace, CublasLt& blas,
                                    StreamHandle stream);

}  // namespace mimo::kernels
