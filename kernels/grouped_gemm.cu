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
// For Hopper, kVariableDepth also has a wgmma kernel (grouped_gemm_hopper.cu), chosen where it
// runs.
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cuda_elements.cuh"
#include "kernels/cuda_grid.cuh"
#include "kernels/cuda_mma.cuh"
#include "kernels/cuda_status.h"
#include "kernels/grouped_gemm.h"
#include "kernels/grouped_gemm_device.cuh"
#include "kernels/grouped_gemm_hopper.cuh"

namespace mimo::kernels {
namespace {

using grouped_gemm_internal::Args;
using grouped_gemm_internal::bf16;
using grouped_gemm_internal::DepthWork;
using grouped_gemm_internal::GroupRows;
using grouped_gemm_internal::kWgmmaBm;
using grouped_gemm_internal::kWgmmaBn;
using grouped_gemm_internal::StorePair;
using grouped_gemm_internal::Work;

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

// Enqueues kKernel(args), raising its dynamic shared memory limit where `smem` needs it.
template <auto kKernel>
absl::Status Launch(const Args& args, dim3 grid, int threads, size_t smem, cudaStream_t s) {
  if (smem > 48 * 1024) {
    MIMO_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(
        kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  }
  kKernel<<<grid, threads, smem, s>>>(args);
  return absl::OkStatus();
}

bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Which tensor-core kernels the current device runs: mma.sync on sm_80 or newer (cp.async, bf16
// MMA) with enough shared memory per block (not sm_86 / sm_89's 99 KiB); wgmma on a compute
// capability 9.0 device when this library has sm_90a code and the driver encodes TMA maps. Asked
// of the driver once per device: every launch wants the answer.
struct DeviceKernels {
  bool mma_sync = false, wgmma = false;
  int multiprocessors = 1;
};

absl::StatusOr<DeviceKernels> KernelsOfDevice() {
  constexpr int kDevices = 64;
  // 0 unknown, else 1 + the kernels' bits + the multiprocessors << 2.
  static std::array<std::atomic<int>, kDevices> known{};
  int device = 0;
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetDevice(&device));
  const auto unpack = [](int v) {
    return DeviceKernels{((v - 1) & 1) != 0, ((v - 1) & 2) != 0, (v - 1) >> 2};
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
  // Its code, too, must be sm_80 or later: older PTX JIT-compiled for this device traps in the
  // mma paths (cuda_mma.cuh).
  k.mma_sync =
      major >= 8 && static_cast<size_t>(smem) >= kSmemBytes &&
      KernelArch<TensorCoreKernel<GroupedGemmMode::kVariableDepth, false, false, float>>() >= 80;
#ifdef MIMO_CUDA_SM90A
  const size_t optin = static_cast<size_t>(smem);
  k.wgmma = major == 9 && minor == 0 && optin >= grouped_gemm_internal::WgmmaSmemBytes() &&
            grouped_gemm_internal::TensorMapsEncodable();
#endif
  k.multiprocessors = std::max(multiprocessors, 1);
  if (device < kDevices) {
    known[device].store(1 + (k.mma_sync ? 1 : 0) + (k.wgmma ? 2 : 0) + (k.multiprocessors << 2),
                        std::memory_order_relaxed);
  }
  return k;
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
  if (kernel == GroupedGemmKernel::kWgmma && p.mode != GroupedGemmMode::kVariableDepth) {
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
        "needs a compute capability 9.0 device, sm_90a code in this build "
        "(CMAKE_CUDA_ARCHITECTURES with 90a) and a driver with cuTensorMapEncodeTiled");
  }
  return absl::OkStatus();
}

// The fastest kernel that can run `p`: wgmma (Hopper weight gradients), mma.sync, else FMA.
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
      MIMO_ASSIGN_OR_RETURN(dim3 grid, Grid(p, kWgmmaBm, kWgmmaBn));
      MIMO_RETURN_IF_ERROR(
          grouped_gemm_internal::LaunchWgmma(args, f32_out, grid, device.multiprocessors, s));
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
