// The grouped GEMM as tiles of rows: the operand tables (one thread per tile), then one
// pointer-array batched cuBLASLt product.
#include <cuda_runtime_api.h>

#include <cstdint>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cuda_launch.h"
#include "kernels/cuda_status.h"
#include "kernels/grouped_gemm_tiles.h"

namespace mimo::kernels {
namespace {

constexpr int64_t kMinTileRows = 64;
constexpr size_t kSpareAlign = 256;

struct TablesParams {
  const int32_t* offsets;
  int groups;
  int64_t rows, tile, tiles;
  const char* a;
  const char* b;
  char* d;
  char* spare;
  int64_t a_tile_bytes, b_group_bytes, d_tile_bytes;
  void** out;  // a's table at out, b's at out + tiles, d's at out + 2 * tiles.
};

// Offset g clamped to [0, rows], as the grouped kernel reads it.
__device__ int64_t Bound(const TablesParams& p, int g) {
  return min(max(static_cast<int64_t>(p.offsets[g]), int64_t{0}), p.rows);
}

__global__ void TablesKernel(const TablesParams p) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= p.tiles) return;
  const int64_t row0 = i * p.tile;
  // The last group starting at or before row0 (of equal bounds, the last: earlier ones are empty).
  int lo = 0, hi = p.groups - 1, g = -1;
  while (lo <= hi) {
    const int mid = (lo + hi) / 2;
    if (Bound(p, mid) <= row0) {
      g = mid;
      lo = mid + 1;
    } else {
      hi = mid - 1;
    }
  }
  const bool inside = g >= 0 && row0 + p.tile <= Bound(p, g + 1);
  p.out[i] = const_cast<char*>(p.a + (inside ? i : 0) * p.a_tile_bytes);
  p.out[p.tiles + i] = const_cast<char*>(p.b + (inside ? g : 0) * p.b_group_bytes);
  p.out[2 * p.tiles + i] = inside ? p.d + i * p.d_tile_bytes : p.spare;
}

bool Aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

size_t TableBytes(int64_t tiles) {
  const size_t bytes = 3 * sizeof(void*) * static_cast<size_t>(tiles);
  return (bytes + kSpareAlign - 1) / kSpareAlign * kSpareAlign;
}

}  // namespace

bool GroupedGemmTilesApply(const GroupedGemmParams& p) {
  return p.mode == GroupedGemmMode::kVariableRows && p.ab_dtype == DType::kBF16 &&
         p.row_multiple >= kMinTileRows && p.k > 0 && p.k % 8 == 0 && p.n > 0 && p.n % 8 == 0 &&
         p.rows / p.row_multiple >= 2 &&
         p.rows / p.row_multiple <= std::numeric_limits<int32_t>::max() / 4 && Aligned16(p.a) &&
         Aligned16(p.b) && Aligned16(p.d);
}

size_t GroupedGemmTilesWorkspaceBytes(const GroupedGemmParams& p) {
  if (p.row_multiple < 1) return 0;
  return TableBytes(p.rows / p.row_multiple) +
         static_cast<size_t>(p.row_multiple * p.n) * DTypeSize(p.d_dtype);
}

absl::Status LaunchGroupedGemmTiles(const GroupedGemmParams& p, void* workspace, CublasLt& blas,
                                    StreamHandle stream) {
  MIMO_RETURN_IF_ERROR(CheckGroupedGemm(p));
  if (!GroupedGemmTilesApply(p) || workspace == nullptr ||
      reinterpret_cast<uintptr_t>(workspace) % kSpareAlign != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "GroupedGemmTiles: needs kVariableRows, bf16 a and b, row_multiple >= ", kMinTileRows,
        ", k and n multiples of 8, 16-byte aligned buffers and a 256-byte aligned workspace; got "
        "row_multiple ",
        p.row_multiple, ", rows ", p.rows, ", n ", p.n, ", k ", p.k));
  }
  const int64_t tiles = p.rows / p.row_multiple;
  const size_t ab = DTypeSize(p.ab_dtype), ds = DTypeSize(p.d_dtype);
  auto** tables = static_cast<void**>(workspace);
  const TablesParams t{.offsets = p.offsets,
                       .groups = static_cast<int>(p.groups),
                       .rows = p.rows,
                       .tile = p.row_multiple,
                       .tiles = tiles,
                       .a = static_cast<const char*>(p.a),
                       .b = static_cast<const char*>(p.b),
                       .d = static_cast<char*>(p.d),
                       .spare = static_cast<char*>(workspace) + TableBytes(tiles),
                       .a_tile_bytes = static_cast<int64_t>(p.row_multiple * p.k * ab),
                       .b_group_bytes = static_cast<int64_t>(p.n * p.k * ab),
                       .d_tile_bytes = static_cast<int64_t>(p.row_multiple * p.n * ds),
                       .out = tables};
  const auto s = static_cast<cudaStream_t>(stream);
  const auto blocks = static_cast<unsigned>((tiles + kThreadsPerBlock - 1) / kThreadsPerBlock);
  TablesKernel<<<blocks, kThreadsPerBlock, 0, s>>>(t);
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return blas.GemmTables({.ab_dtype = p.ab_dtype,
                          .d_dtype = p.d_dtype,
                          .transpose_b = p.transpose_b,
                          .m = p.row_multiple,
                          .n = p.n,
                          .k = p.k,
                          .accumulate = p.accumulate},
                         tables, tables + tiles, tables + 2 * tiles, static_cast<int>(tiles),
                         stream);
}

}  // namespace mimo::kernels
