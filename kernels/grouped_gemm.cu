// Grouped GEMM's CUDA kernels. Every block finds its group on the device: kVariableRows launches
// one block per possible (row tile, column tile), ceil(rows / BM) + groups row tiles being enough
// for any offsets, and each block walks the offsets (one warp, 32 groups per step) to the group
// and row tile it covers, or exits; kVariableDepth launches (column tile, row tile, group) and
// reduces over its group's rows (the second Hopper kernel: a persistent grid striding over the
// same tiles). So the grid depends on sizes only, never on the offsets.
//
// The mma.sync bf16 kernel: 128 x 256 output tiles, 64-deep k steps through a 3-stage cp.async
// pipeline, 8 warps of 64 x 64 each, ldmatrix feeding m16n8k16 MMAs with fp32 accumulators.
// Operands may be stored with k contiguous (a's rows, b as (n, k)) or with m / n contiguous (a^T
// for weight gradients, b as (k, n)); both are copied to shared memory as stored, rows padded by 16
// bytes so ldmatrix's eight rows hit distinct banks, and the latter read with ldmatrix's transpose.
// For Hopper, kVariableDepth also has two wgmma kernels (below); the first is chosen where it runs.
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cuda_elements.cuh"
#include "kernels/cuda_mma.cuh"
#include "kernels/cuda_status.h"
#include "kernels/cuda_tma.cuh"
#include "kernels/cuda_wgmma.cuh"
#include "kernels/grouped_gemm.h"

namespace mimo::kernels {
namespace {

using bf16 = __nv_bfloat16;

// What every kernel here reads. Sizes fit in int32 (CheckGroupedGemm).
struct Args {
  const void* a;
  const void* b;
  void* d;
  const int32_t* offsets;
  int groups, rows, m, n, k;
  bool transpose_b, accumulate;
};

// Group g's rows, clamped to [0, rows] (a decreasing range is empty).
__device__ __forceinline__ int2 GroupRows(const int32_t* offsets, int g, int rows) {
  const int begin = min(max(offsets[g], 0), rows);
  const int end = min(max(offsets[g + 1], begin), rows);
  return make_int2(begin, end);
}

// The block's place in a kVariableRows grid: row tile `slot` (of `bm` rows) among all groups' row
// tiles in order. Sets group -1 when the slot is past the last tile. Every thread must call it.
struct Tile {
  int group, row0, row_end;
};

__device__ Tile FindRowTile(const Args& args, int bm, int slot) {
  __shared__ Tile found;
  if (threadIdx.x < 32) {
    const int lane = threadIdx.x;
    int before = 0;  // Tiles of the groups already passed.
    Tile tile{-1, 0, 0};
    for (int base = 0; base < args.groups; base += 32) {
      const int g = base + lane;
      int2 r = make_int2(0, 0);
      if (g < args.groups) r = GroupRows(args.offsets, g, args.rows);
      const int tiles = (r.y - r.x + bm - 1) / bm;
      int inclusive = tiles;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const int v = __shfl_up_sync(0xffffffffu, inclusive, o);
        if (lane >= o) inclusive += v;
      }
      const int total = __shfl_sync(0xffffffffu, inclusive, 31);
      if (slot < before + total) {  // The same for every lane.
        const int first = before + inclusive - tiles;
        if (slot >= first && slot < first + tiles) {
          tile = Tile{g, r.x + (slot - first) * bm, r.y};
        }
        const unsigned mine = __ballot_sync(0xffffffffu, tile.group >= 0);
        tile.group = __shfl_sync(0xffffffffu, tile.group, __ffs(mine) - 1);
        tile.row0 = __shfl_sync(0xffffffffu, tile.row0, __ffs(mine) - 1);
        tile.row_end = __shfl_sync(0xffffffffu, tile.row_end, __ffs(mine) - 1);
        break;
      }
      before += total;
    }
    if (lane == 0) found = tile;
  }
  __syncthreads();
  return found;
}

// The block's output tile and reduction: rows [m0, m_end) of its output, columns [n0, n), depth
// [k_begin, k_end); where its a, b and d start.
struct Work {
  int m0, m_end, n0, k_begin, k_end;
  const char* a;  // Element (m, kk) at a[m * lda + kk] (k contiguous) or a[kk * lda + m].
  const char* b;  // Element (kk, n) at b[n * ldb + kk] (k contiguous) or b[kk * ldb + n].
  char* d;        // Element (m, n) at d[m * n_total + n].
  int lda, ldb;
};

// kVariableDepth's work for output tile (column tile `col`, row tile `row`) of group `g`: m runs
// over [row * bm, m), k over the group's rows; false when it adds nothing.
__device__ __forceinline__ bool DepthWork(const Args& args, int bm, int bn, size_t d_size, int col,
                                          int row, int g, Work& w) {
  const int2 r = GroupRows(args.offsets, g, args.rows);
  if (r.x == r.y && args.accumulate) return false;  // Adds nothing.
  w.n0 = col * bn;
  w.m0 = row * bm;
  w.m_end = min(w.m0 + bm, args.m);
  w.k_begin = r.x;
  w.k_end = r.y;
  w.a = static_cast<const char*>(args.a);
  w.lda = args.m;
  w.b = static_cast<const char*>(args.b);
  w.ldb = args.n;
  w.d = static_cast<char*>(args.d) + static_cast<size_t>(g) * args.m * args.n * d_size;
  return true;
}

// The work of this block, or false when it has none. kVariableRows: m indexes a's (and d's)
// rows, k runs over [0, k); kVariableDepth: m runs over [0, m) of group blockIdx.z, k over its
// rows.
template <GroupedGemmMode kMode>
__device__ bool FindWork(const Args& args, int bm, int bn, size_t ab_size, size_t d_size, Work& w) {
  if (kMode == GroupedGemmMode::kVariableDepth) {
    return DepthWork(args, bm, bn, d_size, blockIdx.x, blockIdx.y, blockIdx.z, w);
  }
  const Tile tile = FindRowTile(args, bm, blockIdx.x);
  if (tile.group < 0) return false;
  w.n0 = blockIdx.y * bn;
  w.m0 = tile.row0;
  w.m_end = min(tile.row0 + bm, tile.row_end);
  w.k_begin = 0;
  w.k_end = args.k;
  w.a = static_cast<const char*>(args.a);
  w.lda = args.k;
  w.b = static_cast<const char*>(args.b) +
        static_cast<size_t>(tile.group) * args.n * args.k * ab_size;
  w.ldb = args.transpose_b ? args.k : args.n;
  w.d = static_cast<char*>(args.d);
  return true;
}

template <typename OutT>
__device__ __forceinline__ void StorePair(OutT* d, float x, float y, bool accumulate);

template <>
__device__ __forceinline__ void StorePair<float>(float* d, float x, float y, bool accumulate) {
  float2 v = make_float2(x, y);
  if (accumulate) {
    const float2 old = *reinterpret_cast<const float2*>(d);
    v.x = old.x + x;
    v.y = old.y + y;
  }
  *reinterpret_cast<float2*>(d) = v;
}

template <>
__device__ __forceinline__ void StorePair<bf16>(bf16* d, float x, float y, bool accumulate) {
  if (accumulate) {
    const __nv_bfloat162 old = *reinterpret_cast<const __nv_bfloat162*>(d);
    x = __bfloat162float(old.x) + x;
    y = __bfloat162float(old.y) + y;
  }
  *reinterpret_cast<__nv_bfloat162*>(d) = __floats2bfloat162_rn(x, y);
}

// ---------------------------------------------------------------------------------------------
// bf16 tensor-core kernel.

constexpr int kBm = 128, kBn = 256, kBk = 64, kStages = 3, kThreads = 256;
constexpr int kWarpM = 64, kWarpN = 64;  // 2 x 4 warps.
constexpr int kPad = 8;                  // Elements of padding per shared-memory row.
// One operand's stage: (rows, 64 + 8) stored k-contiguous or (64, rows + 8) stored
// m/n-contiguous.
constexpr int StageElems(int rows) { return std::max(rows * (kBk + kPad), kBk * (rows + kPad)); }
constexpr int kStageA = StageElems(kBm), kStageB = StageElems(kBn);
constexpr size_t kSmemBytes = size_t{kStages} * (kStageA + kStageB) * sizeof(bf16);

// Copies one operand's k step [kk0, kk0 + kBk) of kRows rows/columns [x0, x0 + kRows) into
// `dst`: kContiguousK: element (x, kk) at src[x * ld + kk], valid for x < x_end and kk < k_end
// (k_end a multiple of 8 there); otherwise element (kk, x) at src[kk * ld + x], valid for
// kk < k_end and x < x_end (a multiple of 8). Invalid chunks are zero-filled.
template <int kRows, bool kContiguousK>
__device__ __forceinline__ void LoadStage(bf16* dst, const bf16* src, int ld, int x0, int x_end,
                                          int kk0, int k_end) {
  constexpr int kChunks = kRows * kBk / 8;  // 16-byte chunks.
  static_assert(kChunks % kThreads == 0);
#pragma unroll
  for (int it = 0; it < kChunks / kThreads; ++it) {
    const int c = it * kThreads + static_cast<int>(threadIdx.x);
    int x, kk, offset;
    if (kContiguousK) {
      x = x0 + c / (kBk / 8);
      kk = kk0 + (c % (kBk / 8)) * 8;
      offset = (c / (kBk / 8)) * (kBk + kPad) + (c % (kBk / 8)) * 8;
    } else {
      kk = kk0 + c / (kRows / 8);
      x = x0 + (c % (kRows / 8)) * 8;
      offset = (c / (kRows / 8)) * (kRows + kPad) + (c % (kRows / 8)) * 8;
    }
    const bool ok = x < x_end && kk < k_end;
    const bf16* p = kContiguousK ? src + static_cast<int64_t>(x) * ld + kk
                                 : src + static_cast<int64_t>(kk) * ld + x;
    CpAsync16(SmemAddr(dst + offset), ok ? p : src, ok);
  }
}

template <GroupedGemmMode kMode, bool kContiguousKA, bool kContiguousKB, typename OutT>
__global__ void __launch_bounds__(kThreads, 1) TensorCoreKernel(Args args) {
  Work w;
  if (!FindWork<kMode>(args, kBm, kBn, sizeof(bf16), sizeof(OutT), w)) return;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* smem = reinterpret_cast<bf16*>(smem_raw);
  const bf16* a = reinterpret_cast<const bf16*>(w.a);
  const bf16* b = reinterpret_cast<const bf16*>(w.b);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int wm = (warp / 4) * kWarpM, wn = (warp % 4) * kWarpN;
  const int steps = (w.k_end - w.k_begin + kBk - 1) / kBk;
  constexpr int kMi = kWarpM / 16, kNi = kWarpN / 8;  // MMA tiles per warp.

  auto stage_a = [&](int s) { return smem + s * (kStageA + kStageB); };
  auto stage_b = [&](int s) { return smem + s * (kStageA + kStageB) + kStageA; };
  auto load = [&](int step) {
    const int s = step % kStages, kk0 = w.k_begin + step * kBk;
    LoadStage<kBm, kContiguousKA>(stage_a(s), a, w.lda, w.m0, w.m_end, kk0, w.k_end);
    LoadStage<kBn, kContiguousKB>(stage_b(s), b, w.ldb, w.n0, args.n, kk0, w.k_end);
  };

  float acc[kMi][kNi][4] = {};
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < steps) load(s);
    CpAsyncCommit();
  }
  const int r8 = lane % 8, j = lane / 8;
  for (int step = 0; step < steps; ++step) {
    CpAsyncWait<kStages - 2>();
    __syncthreads();
    if (step + kStages - 1 < steps) load(step + kStages - 1);
    CpAsyncCommit();
    const bf16* as = stage_a(step % kStages);
    const bf16* bs = stage_b(step % kStages);
#pragma unroll
    for (int kk = 0; kk < kBk; kk += 16) {
      uint32_t af[kMi][4], bfr[kNi / 2][4];
#pragma unroll
      for (int i = 0; i < kMi; ++i) {
        const int mb = wm + i * 16;
        if (kContiguousKA) {
          LdMatrix(af[i], SmemAddr(as + (mb + r8 + (j % 2) * 8) * (kBk + kPad) + kk + (j / 2) * 8));
        } else {
          LdMatrixTrans(af[i],
                        SmemAddr(as + (kk + r8 + (j / 2) * 8) * (kBm + kPad) + mb + (j % 2) * 8));
        }
      }
#pragma unroll
      for (int h = 0; h < kNi / 2; ++h) {
        const int nb = wn + h * 16;
        if (kContiguousKB) {
          LdMatrix(bfr[h],
                   SmemAddr(bs + (nb + r8 + (j / 2) * 8) * (kBk + kPad) + kk + (j % 2) * 8));
        } else {
          LdMatrixTrans(bfr[h],
                        SmemAddr(bs + (kk + r8 + (j % 2) * 8) * (kBn + kPad) + nb + (j / 2) * 8));
        }
      }
#pragma unroll
      for (int i = 0; i < kMi; ++i) {
#pragma unroll
        for (int q = 0; q < kNi; ++q) {
          Mma(acc[i][q], af[i], bfr[q / 2][(q % 2) * 2], bfr[q / 2][(q % 2) * 2 + 1]);
        }
      }
    }
  }
  CpAsyncWait<0>();

  OutT* d = reinterpret_cast<OutT*>(w.d);
  const int g = lane / 4, t = lane % 4;
#pragma unroll
  for (int i = 0; i < kMi; ++i) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int m = w.m0 + wm + i * 16 + g + half * 8;
      if (m >= w.m_end) continue;
#pragma unroll
      for (int q = 0; q < kNi; ++q) {
        const int n = w.n0 + wn + q * 8 + 2 * t;
        if (n >= args.n) continue;
        StorePair(d + static_cast<int64_t>(m) * args.n + n, acc[i][q][2 * half],
                  acc[i][q][2 * half + 1], args.accumulate);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Hopper bf16 kernel for kVariableDepth (weight gradients): the same 128 x 256 output tiles as
// the mma.sync kernel, computed by two warpgroups of 64 x 256 each through wgmma m64n256k16 from
// shared memory; 64-deep k steps through a 4-stage cp.async pipeline (two steps load ahead while
// one product runs). Both operands stay m/n-contiguous as stored, in 128-byte-swizzled atoms of
// 64 (m or n) x 8 (k): a stage holds a's 2 x 8 atoms and b's 4 x 8, ordered (m/n atom, k atom).

namespace hopper {

constexpr int kBm = 128, kBn = 256, kBk = 64, kStages = 4, kThreads = 256;
constexpr int kAtomBytes = 1024, kAtomsK = kBk / 8;
constexpr int kMnAtomStride = kAtomsK * kAtomBytes;  // Bytes between atoms along m/n.
constexpr int kStageA = kBm / 64 * kMnAtomStride, kStageB = kBn / 64 * kMnAtomStride;
constexpr size_t kSmemBytes = size_t{kStages} * (kStageA + kStageB) + kAtomBytes;  // + alignment.

// Copies rows [kk0, kk0 + kBk) (valid below k_end) and columns [x0, x0 + kCols) (valid below
// x_end, a multiple of 8) of row-major `src` (ld columns) into the atoms at `dst`; invalid chunks
// are zero-filled.
template <int kCols>
__device__ __forceinline__ void LoadMnMajor(uint32_t dst, const bf16* src, int ld, int x0,
                                            int x_end, int kk0, int k_end) {
  constexpr int kChunksPerRow = kCols / 8;
  constexpr int kChunks = kChunksPerRow * kBk;
  static_assert(kChunks % kThreads == 0);
#pragma unroll
  for (int it = 0; it < kChunks / kThreads; ++it) {
    const int c = it * kThreads + static_cast<int>(threadIdx.x);
    const int row = c / kChunksPerRow, chunk = c % kChunksPerRow;
    const int kk = kk0 + row, x = x0 + chunk * 8;
    const bool ok = kk < k_end && x < x_end;
    const uint32_t offset =
        (chunk / 8) * kMnAtomStride + (row / 8) * kAtomBytes + Swizzle128(row % 8, chunk % 8);
    CpAsync16(dst + offset, ok ? src + static_cast<int64_t>(kk) * ld + x : src, ok);
  }
}

template <typename OutT>
__global__ void __launch_bounds__(kThreads, 1) WgmmaDepthKernel(Args args) {
  Work w;
  if (!FindWork<GroupedGemmMode::kVariableDepth>(args, kBm, kBn, sizeof(bf16), sizeof(OutT), w)) {
    return;
  }
  extern __shared__ unsigned char smem_raw[];
  const uint32_t base = (SmemAddr(smem_raw) + kAtomBytes - 1) & ~uint32_t{kAtomBytes - 1};
  const bf16* a = reinterpret_cast<const bf16*>(w.a);
  const bf16* b = reinterpret_cast<const bf16*>(w.b);
  const int warpgroup = threadIdx.x / 128;
  const int steps = (w.k_end - w.k_begin + kBk - 1) / kBk;
  auto stage_a = [&](int s) { return base + s * (kStageA + kStageB); };
  auto stage_b = [&](int s) { return base + s * (kStageA + kStageB) + kStageA; };
  auto load = [&](int step) {
    const int s = step % kStages, kk0 = w.k_begin + step * kBk;
    LoadMnMajor<kBm>(stage_a(s), a, w.lda, w.m0, w.m_end, kk0, w.k_end);
    LoadMnMajor<kBn>(stage_b(s), b, w.ldb, w.n0, args.n, kk0, w.k_end);
  };

  float acc[128];
#pragma unroll
  for (int i = 0; i < 128; ++i) acc[i] = 0.0f;
#pragma unroll
  for (int s = 0; s < kStages - 2; ++s) {
    if (s < steps) load(s);
    CpAsyncCommit();
  }
  for (int step = 0; step < steps; ++step) {
    // Step `step` has landed; after the barrier every warpgroup's product of step - 2 is done
    // (each waited for all but its last), so its stage can be refilled.
    CpAsyncWait<kStages - 3>();
    FenceProxyAsyncShared();
    __syncthreads();
    if (step + kStages - 2 < steps) load(step + kStages - 2);
    CpAsyncCommit();
    const uint32_t as = stage_a(step % kStages) + warpgroup * kMnAtomStride;
    const uint32_t bs = stage_b(step % kStages);
    WgmmaFence();
#pragma unroll
    for (int kk = 0; kk < kBk / 16; ++kk) {
      WgmmaM64N256K16MnMajor(acc,
                             MnMajorSw128Desc(as + kk * 2 * kAtomBytes, kMnAtomStride, kAtomBytes),
                             MnMajorSw128Desc(bs + kk * 2 * kAtomBytes, kMnAtomStride, kAtomBytes));
    }
    WgmmaCommit();
    WgmmaWait<1>(acc);
  }
  WgmmaWait<0>(acc);
  CpAsyncWait<0>();

  OutT* d = reinterpret_cast<OutT*>(w.d);
  const int lane = threadIdx.x % 32, warp = (threadIdx.x % 128) / 32;
  const int m_top = w.m0 + warpgroup * 64 + warp * 16 + lane / 4;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int m = m_top + half * 8;
    if (m >= w.m_end) continue;
#pragma unroll
    for (int j = 0; j < kBn / 8; ++j) {
      const int n = w.n0 + j * 8 + 2 * (lane % 4);
      if (n >= args.n) continue;
      StorePair(d + static_cast<int64_t>(m) * args.n + n, acc[4 * j + 2 * half],
                acc[4 * j + 2 * half + 1], args.accumulate);
    }
  }
}

}  // namespace hopper

// ---------------------------------------------------------------------------------------------
// The second Hopper kernel for kVariableDepth (kWgmmaTma): the same tiles and products as the
// first, persistent, with a producer warpgroup. Its one thread loads 64-deep k steps of both
// operands with TMA into a 4-stage ring of shared memory, each stage's full / empty barriers
// (mbarrier) handing it between producer and consumers; two consumer warpgroups compute 64 x 256
// each through wgmma m64n256k16, keeping one step's products in flight, and release a stage once
// its products are done. The operands' layout is the first kernel's: a TMA box of 64 (m or n) x
// 64 (k) in the 128-byte swizzle is 8 of its atoms along k, a stage a's 2 boxes and b's 4. A step
// starts at any row; the rows of a group's last step past its end (the next group's, or past the
// tensor, which TMA zero-fills) are zeroed in shared memory before the products.

namespace hopper_tma {

constexpr int kBm = 128, kBn = 256, kBk = 64, kStages = 4;
constexpr int kConsumers = 2, kThreads = 128 * (1 + kConsumers);
constexpr int kAtomBytes = 1024, kAtomsK = kBk / 8, kLineBytes = 128;
constexpr int kBoxBytes = kAtomsK * kAtomBytes;  // One TMA box: 64 (m/n) x 64 (k).
constexpr int kStageA = kBm / 64 * kBoxBytes, kStageB = kBn / 64 * kBoxBytes;
constexpr int kStageBytes = kStageA + kStageB;
// The ring, its 2 x kStages barriers, and room to align the ring to 1024 bytes.
constexpr size_t kSmemBytes = size_t{kStages} * kStageBytes + 2 * kStages * 8 + kAtomBytes;
// Registers per thread after the producer gives its own up (SetMaxRegisters*): 40 x 128 +
// 232 x 256 fit the multiprocessor's 65536.
constexpr int kProducerRegisters = 40, kConsumerRegisters = 232;

// Zeroes lines [valid, kBk) (k rows) of every box of a stage: 6 boxes x 8 atoms, each line 128
// bytes in its atom. Called by the 256 consumer threads.
__device__ __forceinline__ void ZeroLinesFrom(uint32_t stage, int valid, int thread) {
  const int lines = kBk - valid;
  constexpr int kChunksPerLine = kLineBytes / 16, kBoxes = kStageBytes / kBoxBytes;
  for (int c = thread; c < lines * kChunksPerLine * kBoxes; c += 128 * kConsumers) {
    const int box = c / (lines * kChunksPerLine), rest = c % (lines * kChunksPerLine);
    const int line = valid + rest / kChunksPerLine, chunk = rest % kChunksPerLine;
    const uint32_t at =
        stage + box * kBoxBytes + (line / 8) * kAtomBytes + (line % 8) * kLineBytes + chunk * 16;
    asm volatile("st.shared.v4.u32 [%0], {%1, %1, %1, %1};\n" ::"r"(at), "r"(0) : "memory");
  }
}

// Output tile `t` of the (column tile, row tile, group) order, column tiles fastest.
__device__ __forceinline__ bool TileWork(const Args& args, int t, size_t d_size, Work& w) {
  const int cols = (args.n + kBn - 1) / kBn, rows = (args.m + kBm - 1) / kBm;
  return DepthWork(args, kBm, kBn, d_size, t % cols, (t / cols) % rows, t / (cols * rows), w);
}

// Persistent: block b computes tiles b, b + gridDim.x, ...; the producer runs into the next tile
// while the consumers store the last one. `it` counts k steps over all of a block's tiles (stage
// it % kStages, in its (it / kStages)-th round).
template <typename OutT>
__global__ void __launch_bounds__(kThreads, 1)
    WgmmaDepthKernel(const __grid_constant__ CUtensorMap map_a,
                     const __grid_constant__ CUtensorMap map_b, Args args, int tiles) {
  extern __shared__ unsigned char smem_raw[];
  const uint32_t base = (SmemAddr(smem_raw) + kAtomBytes - 1) & ~uint32_t{kAtomBytes - 1};
  const uint32_t full = base + kStages * kStageBytes, empty = full + kStages * 8;
  auto stage = [&](int s) { return base + s * kStageBytes; };
  const int warpgroup = threadIdx.x / 128;
  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) {
      MbarInit(full + 8 * s, 1);                  // The producer's arrival (+ its bytes).
      MbarInit(empty + 8 * s, 128 * kConsumers);  // Every consumer thread's.
    }
    FenceMbarInit();
  }
  __syncthreads();

  if (warpgroup == 0) {  // Producer.
    SetMaxRegistersDec<kProducerRegisters>();
    if (threadIdx.x != 0) return;
    int it = 0;
    for (int t = blockIdx.x; t < tiles; t += gridDim.x) {
      Work w;
      if (!TileWork(args, t, sizeof(OutT), w)) continue;
      for (int kk0 = w.k_begin; kk0 < w.k_end; kk0 += kBk, ++it) {
        const int s = it % kStages, round = it / kStages;
        if (round > 0) MbarWait(empty + 8 * s, (round - 1) & 1);
        const uint32_t bar = full + 8 * s;
        MbarArriveExpectTx(bar, kStageBytes);
#pragma unroll
        for (int i = 0; i < kBm / 64; ++i) {
          TmaLoad2d(stage(s) + i * kBoxBytes, &map_a, w.m0 + 64 * i, kk0, bar);
        }
#pragma unroll
        for (int j = 0; j < kBn / 64; ++j) {
          TmaLoad2d(stage(s) + kStageA + j * kBoxBytes, &map_b, w.n0 + 64 * j, kk0, bar);
        }
      }
    }
    return;
  }

  SetMaxRegistersInc<kConsumerRegisters>();
  const int consumer = warpgroup - 1, ct = threadIdx.x - 128;  // ct: thread among consumers.
  const int lane = threadIdx.x % 32, warp = (threadIdx.x % 128) / 32;
  int it = 0;
  for (int t = blockIdx.x; t < tiles; t += gridDim.x) {
    Work w;
    if (!TileWork(args, t, sizeof(OutT), w)) continue;
    float acc[128];
#pragma unroll
    for (int i = 0; i < 128; ++i) acc[i] = 0.0f;
    const int first = it;
    for (int kk0 = w.k_begin; kk0 < w.k_end; kk0 += kBk, ++it) {
      const int s = it % kStages;
      MbarWait(full + 8 * s, (it / kStages) & 1);
      if (w.k_end - kk0 < kBk) {  // The group's last step: lines past its rows add nothing.
        ZeroLinesFrom(stage(s), w.k_end - kk0, ct);
        FenceProxyAsyncShared();
        NamedBarrier(1, 128 * kConsumers);
      }
      const uint32_t as = stage(s) + consumer * kBoxBytes, bs = stage(s) + kStageA;
      WgmmaFence();
#pragma unroll
      for (int kk = 0; kk < kBk / 16; ++kk) {
        WgmmaM64N256K16MnMajor(acc,
                               MnMajorSw128Desc(as + kk * 2 * kAtomBytes, kBoxBytes, kAtomBytes),
                               MnMajorSw128Desc(bs + kk * 2 * kAtomBytes, kBoxBytes, kAtomBytes));
      }
      WgmmaCommit();
      // The previous step's products are done: release its stage. Every consumer thread arrives
      // (one lane per warp would branch inside the pipeline, and ptxas then serializes the wgmma).
      WgmmaWait<1>(acc);
      if (it > first) MbarArrive(empty + 8 * ((it - 1) % kStages));
    }
    WgmmaWait<0>(acc);
    if (it > first) MbarArrive(empty + 8 * ((it - 1) % kStages));  // The tile's last stage.

    OutT* d = reinterpret_cast<OutT*>(w.d);
    const int m_top = w.m0 + consumer * 64 + warp * 16 + lane / 4;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int m = m_top + half * 8;
      if (m >= w.m_end) continue;
#pragma unroll
      for (int j = 0; j < kBn / 8; ++j) {
        const int n = w.n0 + j * 8 + 2 * (lane % 4);
        if (n >= args.n) continue;
        StorePair(d + static_cast<int64_t>(m) * args.n + n, acc[4 * j + 2 * half],
                  acc[4 * j + 2 * half + 1], args.accumulate);
      }
    }
  }
}

}  // namespace hopper_tma

// ---------------------------------------------------------------------------------------------
// fp32 FMA kernel: any dtype, size and alignment. 64 x 64 output tiles, 16-deep k steps; each
// of 256 threads computes 4 x 4 outputs 16 apart.

constexpr int kFmaTile = 64, kFmaDepth = 16;

template <GroupedGemmMode kMode, typename T, typename OutT>
__global__ void __launch_bounds__(kThreads) FmaKernel(Args args) {
  Work w;
  if (!FindWork<kMode>(args, kFmaTile, kFmaTile, sizeof(T), sizeof(OutT), w)) return;
  __shared__ float as[kFmaDepth][kFmaTile + 1];  // (k, m)
  __shared__ float bs[kFmaDepth][kFmaTile + 1];  // (k, n)
  const T* a = reinterpret_cast<const T*>(w.a);
  const T* b = reinterpret_cast<const T*>(w.b);
  const bool a_k = kMode == GroupedGemmMode::kVariableRows;
  const bool b_k = kMode == GroupedGemmMode::kVariableRows && args.transpose_b;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  float acc[4][4] = {};
  for (int k0 = w.k_begin; k0 < w.k_end; k0 += kFmaDepth) {
    for (int i = threadIdx.x; i < kFmaDepth * kFmaTile; i += kThreads) {
      const int kk = i / kFmaTile, x = i % kFmaTile;
      const int m = w.m0 + x, n = w.n0 + x, kabs = k0 + kk;
      const bool k_ok = kabs < w.k_end;
      as[kk][x] = k_ok && m < w.m_end ? ToFloat(a_k ? a[static_cast<int64_t>(m) * w.lda + kabs]
                                                    : a[static_cast<int64_t>(kabs) * w.lda + m])
                                      : 0.0f;
      bs[kk][x] = k_ok && n < args.n ? ToFloat(b_k ? b[static_cast<int64_t>(n) * w.ldb + kabs]
                                                   : b[static_cast<int64_t>(kabs) * w.ldb + n])
                                     : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kFmaDepth; ++kk) {
#pragma unroll
      for (int r = 0; r < 4; ++r) {
#pragma unroll
        for (int c = 0; c < 4; ++c)
          acc[r][c] = fmaf(as[kk][ty + 16 * r], bs[kk][tx + 16 * c], acc[r][c]);
      }
    }
    __syncthreads();
  }
  OutT* d = reinterpret_cast<OutT*>(w.d);
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const int m = w.m0 + ty + 16 * r;
    if (m >= w.m_end) continue;
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const int n = w.n0 + tx + 16 * c;
      if (n >= args.n) continue;
      OutT* p = d + static_cast<int64_t>(m) * args.n + n;
      Put(p, args.accumulate ? ToFloat(*p) + acc[r][c] : acc[r][c]);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Host side.

bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// The driver's cuTensorMapEncodeTiled, found once through the runtime (nothing links libcuda).
absl::StatusOr<PFN_cuTensorMapEncodeTiled_v12000> TensorMapEncoder() {
  static const PFN_cuTensorMapEncodeTiled_v12000 encode = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault,
                                         &found) != cudaSuccess ||
        found != cudaDriverEntryPointSuccess) {
      cudaGetLastError();  // The failed query is not the next launch's error.
      return PFN_cuTensorMapEncodeTiled_v12000{nullptr};
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f);
  }();
  if (encode == nullptr) {
    return absl::UnavailableError(
        "GroupedGemm: the driver has no cuTensorMapEncodeTiled (the wgmma TMA kernel's loads)");
  }
  return encode;
}

// Which tensor-core kernels the current device runs: mma.sync on sm_80 or newer (cp.async, bf16
// MMA) with enough shared memory per block (not sm_86 / sm_89's 99 KiB); wgmma on a compute
// capability 9.0 device when this library has sm_90a code, wgmma_tma where the driver also
// encodes TMA maps. Asked of the driver once per device: every launch wants the answer.
struct DeviceKernels {
  bool mma_sync = false, wgmma = false, wgmma_tma = false;
  int multiprocessors = 1;
};

absl::StatusOr<DeviceKernels> KernelsOfDevice() {
  constexpr int kDevices = 64;
  // 0 unknown, else 1 + the kernels' bits + the multiprocessors << 3.
  static std::array<std::atomic<int>, kDevices> known{};
  int device = 0;
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetDevice(&device));
  const auto unpack = [](int v) {
    return DeviceKernels{((v - 1) & 1) != 0, ((v - 1) & 2) != 0, ((v - 1) & 4) != 0, (v - 1) >> 3};
  };
  if (device < kDevices && known[device].load(std::memory_order_relaxed) != 0) {
    return unpack(known[device].load(std::memory_order_relaxed));
  }
  int major = 0, minor = 0, smem = 0, multiprocessors = 0;
  MIMO_CUDA_RETURN_IF_ERROR(
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  MIMO_CUDA_RETURN_IF_ERROR(
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  MIMO_CUDA_RETURN_IF_ERROR(
      cudaDeviceGetAttribute(&smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  MIMO_CUDA_RETURN_IF_ERROR(
      cudaDeviceGetAttribute(&multiprocessors, cudaDevAttrMultiProcessorCount, device));
  DeviceKernels k;
  k.mma_sync = major >= 8 && static_cast<size_t>(smem) >= kSmemBytes;
#ifdef MIMO_CUDA_SM90A
  k.wgmma = major == 9 && minor == 0 && static_cast<size_t>(smem) >= hopper::kSmemBytes;
  k.wgmma_tma = major == 9 && minor == 0 && static_cast<size_t>(smem) >= hopper_tma::kSmemBytes &&
                TensorMapEncoder().ok();
#endif
  k.multiprocessors = std::max(multiprocessors, 1);
  if (device < kDevices) {
    known[device].store(1 + (k.mma_sync ? 1 : 0) + (k.wgmma ? 2 : 0) + (k.wgmma_tma ? 4 : 0) +
                            (k.multiprocessors << 3),
                        std::memory_order_relaxed);
  }
  return k;
}

// The TMA map of row-major bf16 `data` (rows, cols) read in boxes of 64 columns x 64 rows, stored
// 128-byte swizzled (the wgmma kernels' m/n-contiguous atoms); reads past the tensor give zeros.
absl::StatusOr<CUtensorMap> BoxMap(const void* data, int64_t rows, int64_t cols) {
  MIMO_ASSIGN_OR_RETURN(const PFN_cuTensorMapEncodeTiled_v12000 encode, TensorMapEncoder());
  CUtensorMap map;
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(cols),
                              static_cast<cuuint64_t>(std::max<int64_t>(rows, 1))};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(cols) * sizeof(bf16)};
  const cuuint32_t box[2] = {64, hopper_tma::kBk}, element_strides[2] = {1, 1};
  const CUresult r =
      encode(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<void*>(data), dims, strides, box,
             element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
             CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) {
    return absl::InternalError(absl::StrCat("GroupedGemm: cuTensorMapEncodeTiled failed (CUresult ",
                                            static_cast<int>(r), ") for ", rows, " x ", cols));
  }
  return map;
}

// The persistent wgmma TMA kernel over `grid`'s tiles: one block per multiprocessor, or fewer.
template <typename OutT>
absl::Status LaunchWgmmaTma(const GroupedGemmParams& p, const Args& args, dim3 grid,
                            int multiprocessors, cudaStream_t s) {
  const int64_t tiles = int64_t{grid.x} * grid.y * grid.z;
  if (tiles > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "GroupedGemm: ", tiles, " output tiles are more than the wgmma TMA kernel counts"));
  }
  // Without rows a and b may be null and are never read: the maps get d's address instead.
  MIMO_ASSIGN_OR_RETURN(const CUtensorMap map_a, BoxMap(p.rows > 0 ? p.a : p.d, p.rows, p.m));
  MIMO_ASSIGN_OR_RETURN(const CUtensorMap map_b, BoxMap(p.rows > 0 ? p.b : p.d, p.rows, p.n));
  const auto kernel = hopper_tma::WgmmaDepthKernel<OutT>;
  MIMO_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(kernel,
                                                 cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                 static_cast<int>(hopper_tma::kSmemBytes)));
  const int64_t blocks = std::min<int64_t>(tiles, multiprocessors);
  kernel<<<static_cast<unsigned>(blocks), hopper_tma::kThreads, hopper_tma::kSmemBytes, s>>>(
      map_a, map_b, args, static_cast<int>(tiles));
  return absl::OkStatus();
}

// The grid for tiles of bm x bn: (row slots, column tiles) or (column tiles, row tiles, groups).
absl::StatusOr<dim3> Grid(const GroupedGemmParams& p, int bm, int bn) {
  const int64_t col_tiles = (p.n + bn - 1) / bn;
  if (p.mode == GroupedGemmMode::kVariableRows) {
    const int64_t slots = (p.rows + bm - 1) / bm + p.groups;
    if (col_tiles > 65535) {
      return absl::InvalidArgumentError(
          absl::StrCat("GroupedGemm: n ", p.n, " needs more than 65535 column tiles"));
    }
    return dim3(static_cast<unsigned>(slots), static_cast<unsigned>(col_tiles), 1);
  }
  const int64_t row_tiles = (p.m + bm - 1) / bm;
  if (row_tiles > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("GroupedGemm: m ", p.m, " needs more than 65535 row tiles"));
  }
  return dim3(static_cast<unsigned>(col_tiles), static_cast<unsigned>(row_tiles),
              static_cast<unsigned>(p.groups));
}

template <auto kKernel>
absl::Status Launch(const Args& args, dim3 grid, int threads, size_t smem, cudaStream_t s) {
  if (smem > 48 * 1024) {
    MIMO_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(
        kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  }
  kKernel<<<grid, threads, smem, s>>>(args);
  return absl::OkStatus();
}

template <typename OutT>
absl::Status MmaSync(const GroupedGemmParams& p, const Args& args, dim3 grid, cudaStream_t s) {
  using M = GroupedGemmMode;
  if (p.mode == M::kVariableDepth) {
    return Launch<TensorCoreKernel<M::kVariableDepth, false, false, OutT>>(args, grid, kThreads,
                                                                           kSmemBytes, s);
  }
  if (p.transpose_b) {
    return Launch<TensorCoreKernel<M::kVariableRows, true, true, OutT>>(args, grid, kThreads,
                                                                        kSmemBytes, s);
  }
  return Launch<TensorCoreKernel<M::kVariableRows, true, false, OutT>>(args, grid, kThreads,
                                                                       kSmemBytes, s);
}

template <typename T, typename OutT>
absl::Status Fma(const GroupedGemmParams& p, const Args& args, dim3 grid, cudaStream_t s) {
  if (p.mode == GroupedGemmMode::kVariableRows) {
    return Launch<FmaKernel<GroupedGemmMode::kVariableRows, T, OutT>>(args, grid, kThreads, 0, s);
  }
  return Launch<FmaKernel<GroupedGemmMode::kVariableDepth, T, OutT>>(args, grid, kThreads, 0, s);
}

// Why `kernel` cannot run `p` here, or OK.
absl::Status Refusal(const GroupedGemmParams& p, GroupedGemmKernel kernel,
                     const DeviceKernels& device) {
  if (kernel == GroupedGemmKernel::kFma) return absl::OkStatus();
  const absl::string_view name = GroupedGemmKernelName(kernel);
  const auto refuse = [&](auto... why) {
    return absl::FailedPreconditionError(
        absl::StrCat("GroupedGemm: the ", name, " kernel ", why...));
  };
  const bool hopper = kernel == GroupedGemmKernel::kWgmma || kernel == GroupedGemmKernel::kWgmmaTma;
  if (hopper && p.mode != GroupedGemmMode::kVariableDepth) {
    return refuse("runs kVariableDepth only");
  }
  if (p.ab_dtype != DType::kBF16) return refuse("needs bf16 a and b, got ", DTypeName(p.ab_dtype));
  const bool rows_mode = p.mode == GroupedGemmMode::kVariableRows;
  const int64_t inner = rows_mode ? p.k : p.m;
  if (inner % 8 != 0 || p.n % 8 != 0) {
    return refuse("needs ", rows_mode ? "k" : "m", " and n multiples of 8, got ", inner, " and ",
                  p.n);
  }
  for (const auto& [what, ptr] :
       {std::pair<const char*, const void*>{"a", p.a}, {"b", p.b}, {"d", p.d}}) {
    if (!Aligned16(ptr)) return refuse("needs 16-byte aligned buffers; ", what, " is not");
  }
  if (kernel == GroupedGemmKernel::kMmaSync && !device.mma_sync) {
    return refuse("needs compute capability 8.0+ and 162 KiB of shared memory per block");
  }
  if (kernel == GroupedGemmKernel::kWgmma && !device.wgmma) {
    return refuse(
        "needs a compute capability 9.0 device and sm_90a code in this build "
        "(CMAKE_CUDA_ARCHITECTURES with 90a)");
  }
  if (kernel == GroupedGemmKernel::kWgmmaTma && !device.wgmma_tma) {
    return refuse(
        "needs a compute capability 9.0 device, sm_90a code in this build "
        "(CMAKE_CUDA_ARCHITECTURES with 90a) and a driver with cuTensorMapEncodeTiled");
  }
  return absl::OkStatus();
}

// The fastest kernel that can run `p`: wgmma (Hopper weight gradients), mma.sync, else FMA. The
// wgmma TMA kernel is not chosen until it has run and been timed on a GPU.
GroupedGemmKernel Choose(const GroupedGemmParams& p, const DeviceKernels& device) {
  for (GroupedGemmKernel k : {GroupedGemmKernel::kWgmma, GroupedGemmKernel::kMmaSync}) {
    if (Refusal(p, k, device).ok()) return k;
  }
  return GroupedGemmKernel::kFma;
}

bool Empty(const GroupedGemmParams& p) {
  return p.n == 0 || (p.mode == GroupedGemmMode::kVariableRows ? p.rows == 0 : p.m == 0);
}

// Enqueues checked, non-empty `p` on `kernel`, which can run it.
absl::Status Run(const GroupedGemmParams& p, GroupedGemmKernel kernel, const DeviceKernels& device,
                 cudaStream_t s) {
  const Args args{.a = p.a,
                  .b = p.b,
                  .d = p.d,
                  .offsets = p.offsets,
                  .groups = static_cast<int>(p.groups),
                  .rows = static_cast<int>(p.rows),
                  .m = static_cast<int>(p.m),
                  .n = static_cast<int>(p.n),
                  .k = static_cast<int>(p.k),
                  .transpose_b = p.transpose_b,
                  .accumulate = p.accumulate};
  const bool f32_out = p.d_dtype == DType::kF32;
  switch (kernel) {
    case GroupedGemmKernel::kWgmma: {
      MIMO_ASSIGN_OR_RETURN(dim3 grid, Grid(p, hopper::kBm, hopper::kBn));
      MIMO_RETURN_IF_ERROR(f32_out ? Launch<hopper::WgmmaDepthKernel<float>>(
                                         args, grid, hopper::kThreads, hopper::kSmemBytes, s)
                                   : Launch<hopper::WgmmaDepthKernel<bf16>>(
                                         args, grid, hopper::kThreads, hopper::kSmemBytes, s));
      break;
    }
    case GroupedGemmKernel::kWgmmaTma: {
      MIMO_ASSIGN_OR_RETURN(dim3 grid, Grid(p, hopper_tma::kBm, hopper_tma::kBn));
      const int sms = device.multiprocessors;
      MIMO_RETURN_IF_ERROR(f32_out ? LaunchWgmmaTma<float>(p, args, grid, sms, s)
                                   : LaunchWgmmaTma<bf16>(p, args, grid, sms, s));
      break;
    }
    case GroupedGemmKernel::kMmaSync: {
      MIMO_ASSIGN_OR_RETURN(dim3 grid, Grid(p, kBm, kBn));
      MIMO_RETURN_IF_ERROR(f32_out ? MmaSync<float>(p, args, grid, s)
                                   : MmaSync<bf16>(p, args, grid, s));
      break;
    }
    case GroupedGemmKernel::kFma: {
      MIMO_ASSIGN_OR_RETURN(dim3 grid, Grid(p, kFmaTile, kFmaTile));
      if (p.ab_dtype == DType::kF32) {
        MIMO_RETURN_IF_ERROR((Fma<float, float>(p, args, grid, s)));
      } else if (f32_out) {
        MIMO_RETURN_IF_ERROR((Fma<bf16, float>(p, args, grid, s)));
      } else {
        MIMO_RETURN_IF_ERROR((Fma<bf16, bf16>(p, args, grid, s)));
      }
      break;
    }
  }
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace

absl::string_view GroupedGemmKernelName(GroupedGemmKernel kernel) {
  switch (kernel) {
    case GroupedGemmKernel::kFma:
      return "FMA";
    case GroupedGemmKernel::kMmaSync:
      return "mma.sync";
    case GroupedGemmKernel::kWgmma:
      return "wgmma";
    case GroupedGemmKernel::kWgmmaTma:
      return "wgmma_tma";
  }
  return "unknown";
}

absl::StatusOr<GroupedGemmKernel> ChooseGroupedGemmKernel(const GroupedGemmParams& p) {
  MIMO_RETURN_IF_ERROR(CheckGroupedGemm(p));
  MIMO_ASSIGN_OR_RETURN(const DeviceKernels device, KernelsOfDevice());
  return Choose(p, device);
}

absl::Status LaunchGroupedGemmWith(const GroupedGemmParams& p, GroupedGemmKernel kernel,
                                   StreamHandle stream) {
  MIMO_RETURN_IF_ERROR(CheckGroupedGemm(p));
  MIMO_ASSIGN_OR_RETURN(const DeviceKernels device, KernelsOfDevice());
  MIMO_RETURN_IF_ERROR(Refusal(p, kernel, device));
  if (Empty(p)) return absl::OkStatus();
  return Run(p, kernel, device, static_cast<cudaStream_t>(stream));
}

absl::Status LaunchGroupedGemm(const GroupedGemmParams& p, StreamHandle stream) {
  MIMO_RETURN_IF_ERROR(CheckGroupedGemm(p));
  if (Empty(p)) return absl::OkStatus();
  MIMO_ASSIGN_OR_RETURN(const DeviceKernels device, KernelsOfDevice());
  return Run(p, Choose(p, device), device, static_cast<cudaStream_t>(stream));
}

}  // namespace mimo::kernels
