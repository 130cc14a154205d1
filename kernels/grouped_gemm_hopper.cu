// The grouped GEMM's Hopper kernel for kVariableDepth (weight gradients): wgmma m64n256k16 over
// 128 x 256 output tiles with operands in 128-byte-swizzled shared memory, persistent, a TMA
// producer warpgroup feeding two consumer warpgroups. The TMA maps are encoded through the
// driver's entry point (nothing links libcuda).
#include <cuda.h>
#include <cudaTypedefs.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cuda_mma.cuh"
#include "kernels/cuda_status.h"
#include "kernels/cuda_tma.cuh"
#include "kernels/cuda_wgmma.cuh"
#include "kernels/grouped_gemm_hopper.cuh"

namespace mimo::kernels::grouped_gemm_internal {
namespace {

// Sets a warpgroup's 64 x 256 accumulators (the fragment layout of WgmmaM64N256K16MnMajor) for
// rows [m0, m0 + 64) of its block's tile `w` to the output's values there when the products add
// to it (kAdd), else to zero. The old values load before the tile's products, every load issued
// before any is used: added in the epilogue instead (each pair's load presumably waiting behind
// the previous pair's store) the kernel ran 2.2x slower adding than writing (bench/RESULTS.md),
// 1.14-1.19x now (H200). kAdd is a template argument and the loads are unconditional (outside the
// output, where nothing is stored, they read the group's first pair): ptxas serializes the wgmma
// when an accumulator has a definition that is not always taken.
template <typename OutT, bool kAdd>
__device__ __forceinline__ void InitWarpgroupTile(float (&acc)[128], const Work& w,
                                                  const Args& args, int m0) {
  if constexpr (!kAdd) {
#pragma unroll
    for (int i = 0; i < 128; ++i) acc[i] = 0.0f;
  } else {
    const OutT* d = reinterpret_cast<const OutT*>(w.d);
    const int lane = threadIdx.x % 32, warp = (threadIdx.x % 128) / 32;
    const int m_top = m0 + warp * 16 + lane / 4;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int m = m_top + half * 8;
#pragma unroll
      for (int j = 0; j < kWgmmaBn / 8; ++j) {
        const int n = w.n0 + j * 8 + 2 * (lane % 4);
        const bool inside = m < w.m_end && n < args.n;
        const float2 old = LoadPair(d + (inside ? static_cast<int64_t>(m) * args.n + n : 0));
        acc[4 * j + 2 * half] = old.x;
        acc[4 * j + 2 * half + 1] = old.y;
      }
    }
  }
}

// Stores a warpgroup's 64 x 256 accumulators (as InitWarpgroupTile lays them out) at rows
// [m0, m0 + 64) of its block's tile `w`, written or added to the old values (`add`); rows and
// columns past the output are skipped.
template <typename OutT>
__device__ __forceinline__ void StoreWarpgroupTile(const float (&acc)[128], const Work& w,
                                                   const Args& args, int m0, bool add) {
  OutT* d = reinterpret_cast<OutT*>(w.d);
  const int lane = threadIdx.x % 32, warp = (threadIdx.x % 128) / 32;
  const int m_top = m0 + warp * 16 + lane / 4;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int m = m_top + half * 8;
    if (m >= w.m_end) continue;
#pragma unroll
    for (int j = 0; j < kWgmmaBn / 8; ++j) {
      const int n = w.n0 + j * 8 + 2 * (lane % 4);
      if (n >= args.n) continue;
      StorePair(d + static_cast<int64_t>(m) * args.n + n, acc[4 * j + 2 * half],
                acc[4 * j + 2 * half + 1], add);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The kernel: persistent, with a producer warpgroup. Its one thread loads 64-deep k steps of both
// operands with TMA into a 4-stage ring of shared memory, each stage's full / empty barriers
// (mbarrier) handing it between producer and consumers; two consumer warpgroups compute 64 x 256
// each through wgmma m64n256k16, keeping one step's products in flight, and release a stage once
// its products are done. Both operands stay m/n-contiguous as stored, in 128-byte-swizzled atoms
// of 64 (m or n) x 8 (k); a TMA box of 64 (m or n) x 64 (k) is 8 atoms along k, a stage a's 2
// boxes and b's 4. A step starts at any row; the rows of a group's last step past its end (the
// next group's, or past the tensor, which TMA zero-fills) are zeroed in shared memory before the
// products.

namespace hopper {

constexpr int kBm = kWgmmaBm, kBn = kWgmmaBn, kBk = 64, kStages = 4;
constexpr int kAtomBytes = 1024, kAtomsK = kBk / 8;
constexpr int kMnAtomStride = kAtomsK * kAtomBytes;  // Bytes between atoms along m/n.
constexpr int kStageA = kBm / 64 * kMnAtomStride, kStageB = kBn / 64 * kMnAtomStride;
constexpr int kConsumers = 2, kThreads = 128 * (1 + kConsumers);
constexpr int kLineBytes = 128;
constexpr int kBoxBytes = kMnAtomStride;  // One TMA box: 64 (m/n) x 64 (k), 8 atoms.
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
template <typename OutT, bool kAdd>
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
  int it = 0;
  for (int t = blockIdx.x; t < tiles; t += gridDim.x) {
    Work w;
    if (!TileWork(args, t, sizeof(OutT), w)) continue;
    float acc[128];
    InitWarpgroupTile<OutT, kAdd>(acc, w, args, w.m0 + consumer * 64);
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

    // The added form's accumulators hold the sums already: its test, rows < 0, never holds (the
    // host checks rows >= 0). Both forms keep a test at run time in the epilogue: folded to a
    // constant, the epilogue ran 1.2-1.45x slower on an H100 and an H200 (bench/RESULTS.md,
    // fifteenth session), for a reason not found.
    StoreWarpgroupTile<OutT>(acc, w, args, w.m0 + consumer * 64,
                             kAdd ? args.rows < 0 : args.accumulate);
  }
}

}  // namespace hopper

// ---------------------------------------------------------------------------------------------
// Host side.

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
        "GroupedGemm: the driver has no cuTensorMapEncodeTiled (the wgmma kernel's loads)");
  }
  return encode;
}

// The TMA map of row-major bf16 `data` (rows, cols) read in boxes of 64 columns x 64 rows, stored
// 128-byte swizzled (the kernel's m/n-contiguous atoms); reads past the tensor give zeros.
absl::StatusOr<CUtensorMap> BoxMap(const void* data, int64_t rows, int64_t cols) {
  MIMO_ASSIGN_OR_RETURN(const PFN_cuTensorMapEncodeTiled_v12000 encode, TensorMapEncoder());
  CUtensorMap map;
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(cols),
                              static_cast<cuuint64_t>(std::max<int64_t>(rows, 1))};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(cols) * sizeof(bf16)};
  const cuuint32_t box[2] = {64, hopper::kBk}, element_strides[2] = {1, 1};
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

// The persistent kernel over the tiles of `grid`: one block per multiprocessor, or fewer.
template <typename OutT>
absl::Status LaunchPersistent(const Args& args, dim3 grid, int multiprocessors, cudaStream_t s) {
  const int64_t tiles = int64_t{grid.x} * grid.y * grid.z;
  if (tiles > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "GroupedGemm: ", tiles, " output tiles are more than the wgmma kernel counts"));
  }
  // Without rows a and b may be null and are never read: the maps get d's address instead.
  MIMO_ASSIGN_OR_RETURN(const CUtensorMap map_a,
                        BoxMap(args.rows > 0 ? args.a : args.d, args.rows, args.m));
  MIMO_ASSIGN_OR_RETURN(const CUtensorMap map_b,
                        BoxMap(args.rows > 0 ? args.b : args.d, args.rows, args.n));
  const auto kernel = args.accumulate ? hopper::WgmmaDepthKernel<OutT, true>
                                      : hopper::WgmmaDepthKernel<OutT, false>;
  MIMO_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(
      kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(hopper::kSmemBytes)));
  const int64_t blocks = std::min<int64_t>(tiles, multiprocessors);
  kernel<<<static_cast<unsigned>(blocks), hopper::kThreads, hopper::kSmemBytes, s>>>(
      map_a, map_b, args, static_cast<int>(tiles));
  return absl::OkStatus();
}

}  // namespace

size_t WgmmaSmemBytes() { return hopper::kSmemBytes; }
bool TensorMapsEncodable() { return TensorMapEncoder().ok(); }

absl::Status LaunchWgmma(const Args& args, bool f32_out, dim3 grid, int multiprocessors,
                         cudaStream_t s) {
  return f32_out ? LaunchPersistent<float>(args, grid, multiprocessors, s)
                 : LaunchPersistent<bf16>(args, grid, multiprocessors, s);
}

}  // namespace mimo::kernels::grouped_gemm_internal
