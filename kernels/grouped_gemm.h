// Grouped matrix products over row blocks whose bounds live in device memory (MoE experts: one
// block of rows per expert): the products of every group in one launch, with no host
// synchronization, so a CUDA graph can capture them; and the CPU twin.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "kernels/allocator.h"
#include "kernels/dtype.h"

namespace mimo::kernels {

enum class GroupedGemmMode {
  // Each group's rows of a times its own matrix of b: d[r] = a[r] . op(b[g]) for the rows r of
  // group g (an expert's forward and input gradient). a (rows, k); b (groups, n, k) when
  // transpose_b, else (groups, k, n); d (rows, n). Rows in no group are left as they are.
  kVariableRows,
  // Each group's rows of a and b reduced into the group's own matrix: d[g] (+)= a[rows of g]^T .
  // b[rows of g] (an expert's weight gradient). a (rows, m); b (rows, n); d (groups, m, n); a
  // group without rows gives d[g] = 0, or leaves it as it is when accumulating.
  kVariableDepth,
};

// Group g's rows are [offsets[g], offsets[g + 1]). Matrices are row-major and dense; products
// accumulate in fp32 and are rounded once to d's dtype.
struct GroupedGemmParams {
  GroupedGemmMode mode = GroupedGemmMode::kVariableRows;
  DType ab_dtype = DType::kF32;  // Of a and b: bf16 or f32.
  DType d_dtype = DType::kF32;   // Of d: ab_dtype or f32.
  const void* a = nullptr;
  const void* b = nullptr;
  void* d = nullptr;  // May not alias a or b.
  // (groups + 1,) non-decreasing, in [0, rows]; in the memory of the device that runs the op.
  const int32_t* offsets = nullptr;
  int64_t groups = 0;  // In [1, 65535].
  int64_t rows = 0;    // Rows of a (and of b or d): a bound on offsets[groups].
  int64_t m = 0;       // kVariableDepth only: columns of a, rows of each d[g].
  int64_t n = 0;
  int64_t k = 0;             // kVariableRows only: columns of a.
  bool transpose_b = false;  // kVariableRows only.
  bool accumulate = false;   // d (+)= the products.
  // kVariableRows only: every offsets[g] is a multiple of this (an MoE layer's padding to its
  // alignment). At 64 or more the CUDA op may run the groups as cuBLASLt products of that many
  // rows each (GroupedGemmTiles). The CPU twin checks it; the CUDA op trusts it.
  int64_t row_multiple = 1;
};

// InvalidArgument for unsupported dtypes, sizes out of range (each below 2^31 - 1024), null
// buffers, a transpose_b or k in kVariableDepth, or an m in kVariableRows.
absl::Status CheckGroupedGemm(const GroupedGemmParams& p);

// CPU twin: host memory, one GemmCpu per group (so results equal per-group products bitwise).
// Also InvalidArgument for offsets that decrease or leave [0, rows].
absl::Status GroupedGemmCpu(const GroupedGemmParams& p);

// The CUDA kernels a grouped product can run on.
enum class GroupedGemmKernel {
  kFma,      // fp32 FMA, 64 x 64 tiles: any dtype, size and alignment.
  kMmaSync,  // bf16 tensor cores through mma.sync, 128 x 256 tiles: compute capability 8.0+ with
             // 162 KiB of shared memory per block (A100, H100).
  kWgmma,    // bf16 kVariableDepth through Hopper's wgmma, 128 x 256 tiles, persistent, its
             // operands loaded by TMA: compute capability 9.0, sm_90a code in the build
             // (CMAKE_CUDA_ARCHITECTURES with 90a) and a driver with cuTensorMapEncodeTiled. On an
             // H100: 540-610 TFLOP/s writing the graph-safe MoE layer's weight gradients (clocks
             // locked at 1.45 GHz), about 260 adding to them, 1.4x mma.sync (bench/RESULTS.md).
};
// The tensor-core kernels also need bf16 a and b whose inner sizes (k and n for kVariableRows, m
// and n for kVariableDepth) are multiples of 8 and 16-byte aligned a, b and d.

// "FMA", "mma.sync", "wgmma".
absl::string_view GroupedGemmKernelName(GroupedGemmKernel kernel);

// The kernel LaunchGroupedGemm runs `p` on for the current device: wgmma where it can, else
// mma.sync where it can, else FMA. InvalidArgument as CheckGroupedGemm; a CUDA error when the
// device cannot be queried.
absl::StatusOr<GroupedGemmKernel> ChooseGroupedGemmKernel(const GroupedGemmParams& p);

// CUDA: device memory, enqueued on `stream` (a cudaStream_t) with no host synchronization, so it
// may be captured in a CUDA graph, on ChooseGroupedGemmKernel's kernel. Offsets are not checked
// on the device: each group's range is clamped to [0, rows] (a decreasing one is empty), so
// offsets that break the contract give undefined values (overlapping groups race) but never
// reach memory outside the buffers. (The Ops' GroupedGemm may instead run a kVariableRows product
// with a row_multiple of 64 or more through cuBLASLt: GroupedGemmTiles.)
absl::Status LaunchGroupedGemm(const GroupedGemmParams& p, StreamHandle stream);

// LaunchGroupedGemm on the named kernel, for tests and benchmarks that compare them;
// FailedPrecondition (before anything is enqueued) when it cannot run `p` on this device.
absl::Status LaunchGroupedGemmWith(const GroupedGemmParams& p, GroupedGemmKernel kernel,
                                   StreamHandle stream);

}  // namespace mimo::kernels
