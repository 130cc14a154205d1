// RMSNorm over the last dimension, forward and backward: the CUDA kernels (fp32 arithmetic on
// bf16 or f32 storage). Rows that fit (at most kMaxVecs 16-byte vectors per thread) are held in
// registers and moved as 16-byte vectors; other shapes take a scalar path. The forward takes a
// block per row. The backward runs 2 blocks per SM over strided rows, each thread copying its own
// vectors of the next rows into shared memory (cp.async) so that many rows' loads are in flight,
// and folds dweight's per-block partial sums into the dx pass (added up in pairs of blocks of a
// cluster before they are written, then by a column sum). Every sum is taken in a fixed order, so
// results are deterministic.
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <initializer_list>

#include "absl/strings/str_cat.h"
#include "kernels/cuda_block_reduce.cuh"
#include "kernels/cuda_column_sum.cuh"
#include "kernels/cuda_elements.cuh"
#include "kernels/cuda_grid.cuh"
#include "kernels/cuda_launch.h"
#include "kernels/cuda_mma.cuh"
#include "kernels/cuda_status.h"
#include "kernels/cuda_vector.cuh"
#include "kernels/rmsnorm.h"

namespace mimo::kernels {
namespace {

constexpr int kThreads = 256;
// Vectors per thread at most: rows up to 8192 bf16 or 4096 f32 elements. Kernels are compiled
// for 1, 2 and 4 (registers scale with it) and launched with the fewest that hold the row.
constexpr int kMaxVecs = 4;

// The vector count per thread to launch with for `cols` elements of T (the row fits).
template <typename T>
int VecsPerThread(int64_t cols) {
  const int64_t vecs = cols / kVecWidth<T>;
  return vecs <= kThreads ? 1 : vecs <= 2 * kThreads ? 2 : 4;
}

// Whether a row of `cols` elements of T takes the vector path with these pointers.
template <typename T>
bool Vectorizable(int64_t cols, std::initializer_list<const void*> pointers) {
  if (cols % kVecWidth<T> != 0 || cols / kVecWidth < T >> int64_t{kThreads} * kMaxVecs)
    return false;
  for (const void* p : pointers) {
    if (!VecAligned(p)) return false;
  }
  return true;
}

template <typename T, int kMaxVecs>
__global__ void RmsNormVecKernel(const T* __restrict__ x, const T* __restrict__ weight,
                                 T* __restrict__ y, float* __restrict__ rstd_out, int64_t cols,
                                 float eps) {
  constexpr int V = kVecWidth<T>;
  __shared__ float scratch[kThreads / 32];
  const int vecs = static_cast<int>(cols / V);
  const int64_t base = static_cast<int64_t>(blockIdx.x) * cols;
  float v[kMaxVecs][V];
  float sum = 0.0f;
#pragma unroll
  for (int j = 0; j < kMaxVecs; ++j) {
    const int c = threadIdx.x + j * kThreads;
    if (c < vecs) {
      LoadVec(x + base + c * V, v[j]);
#pragma unroll
      for (int i = 0; i < V; ++i) sum += v[j][i] * v[j][i];
    }
  }
  sum = BlockSum(sum, scratch);
  const float rstd = rsqrtf(sum / static_cast<float>(cols) + eps);
  if (threadIdx.x == 0) rstd_out[blockIdx.x] = rstd;
#pragma unroll
  for (int j = 0; j < kMaxVecs; ++j) {
    const int c = threadIdx.x + j * kThreads;
    if (c < vecs) {
      float w[V];
      LoadVec(weight + c * V, w);
#pragma unroll
      for (int i = 0; i < V; ++i) v[j][i] *= rstd * w[i];
      StoreVec(y + base + c * V, v[j]);
    }
  }
}

// Rows in flight per thread in the backward's shared-memory pipeline: about 96 KiB a block, so
// two blocks fit an SM of an H100 or H200 with about 16 KiB of loads each in flight per warp.
template <int kMaxVecs>
constexpr int BackwardStages() {
  return kMaxVecs == 1 ? 8 : kMaxVecs == 2 ? 6 : 3;
}

template <int kMaxVecs>
constexpr size_t BackwardSmemBytes() {
  return size_t{BackwardStages<kMaxVecs>()} * 2 * kMaxVecs * kThreads * sizeof(uint4);
}

// dx for rows blockIdx.x, blockIdx.x + gridDim.x, ...; with `partial`, this block's sums of
// dy * xhat over those rows go to partial[blockIdx.x] (cols,), or, `paired` (clusters of 2), the
// pair's sums to partial[blockIdx.x / 2]. Each thread copies its own 16-byte
// vectors of dy and x for the next kStages - 1 rows into its own shared-memory slots
// (cp.async), so many rows' loads are in flight without registers to hold them, and no thread
// waits for another's copies.
template <typename T, int kMaxVecs>
__global__ void RmsNormBackwardVecKernel(const T* __restrict__ dy, const T* __restrict__ x,
                                         const T* __restrict__ weight,
                                         const float* __restrict__ rstd_in, T* __restrict__ dx,
                                         float* __restrict__ partial, int64_t rows, int64_t cols,
                                         bool paired) {
  constexpr int V = kVecWidth<T>;
  constexpr int kStages = BackwardStages<kMaxVecs>();
  __shared__ float scratch[kThreads / 32];
  // (kStages, 2 = dy / x, kMaxVecs, kThreads) 16-byte slots, a thread's own at [..][threadIdx.x].
  extern __shared__ uint4 slots[];
  const auto slot = [&](int stage, int which, int j) {
    return slots + ((stage * 2 + which) * kMaxVecs + j) * kThreads + threadIdx.x;
  };
  const int vecs = static_cast<int>(cols / V);
  const float inv_cols = 1.0f / static_cast<float>(cols);
  float w[kMaxVecs][V], acc[kMaxVecs][V];
#pragma unroll
  for (int j = 0; j < kMaxVecs; ++j) {
    const int c = threadIdx.x + j * kThreads;
#pragma unroll
    for (int i = 0; i < V; ++i) acc[j][i] = 0.0f;
    if (c < vecs) LoadVec(weight + c * V, w[j]);
  }
  // Copies row `row`'s vectors into `stage` (nothing past the last row); one commit group a call.
  const auto fetch = [&](int64_t row, int stage) {
    if (row < rows) {
#pragma unroll
      for (int j = 0; j < kMaxVecs; ++j) {
        const int c = threadIdx.x + j * kThreads;
        if (c < vecs) {
          CpAsync16(SmemAddr(slot(stage, 0, j)), dy + row * cols + c * V, true);
          CpAsync16(SmemAddr(slot(stage, 1, j)), x + row * cols + c * V, true);
        }
      }
    }
    CpAsyncCommit();
  };
  const int64_t step = gridDim.x;
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) fetch(blockIdx.x + s * step, s);
  float rstd = blockIdx.x < rows ? rstd_in[blockIdx.x] : 0.0f;
  int stage = 0;
  for (int64_t row = blockIdx.x; row < rows; row += step) {
    const int64_t base = row * cols;
    fetch(row + (kStages - 1) * step, stage == 0 ? kStages - 1 : stage - 1);
    const float next_rstd = row + step < rows ? rstd_in[row + step] : 0.0f;
    CpAsyncWait<kStages - 1>();
    float g[kMaxVecs][V], xh[kMaxVecs][V];
#pragma unroll
    for (int j = 0; j < kMaxVecs; ++j) {
      if (threadIdx.x + j * kThreads < vecs) {
        Unpack(*slot(stage, 0, j), g[j]);
        Unpack(*slot(stage, 1, j), xh[j]);
      }
    }
    float dot = 0.0f;
#pragma unroll
    for (int j = 0; j < kMaxVecs; ++j) {
      const int c = threadIdx.x + j * kThreads;
      if (c < vecs) {
#pragma unroll
        for (int i = 0; i < V; ++i) {
          xh[j][i] *= rstd;
          acc[j][i] += g[j][i] * xh[j][i];
          g[j][i] *= w[j][i];
          dot += g[j][i] * xh[j][i];
        }
      }
    }
    const float mean = BlockSum(dot, scratch) * inv_cols;
#pragma unroll
    for (int j = 0; j < kMaxVecs; ++j) {
      const int c = threadIdx.x + j * kThreads;
      if (c < vecs) {
#pragma unroll
        for (int i = 0; i < V; ++i) g[j][i] = rstd * (g[j][i] - xh[j][i] * mean);
        StoreVec(dx + base + c * V, g[j]);
      }
    }
    rstd = next_rstd;
    stage = stage + 1 == kStages ? 0 : stage + 1;
  }
  CpAsyncWait<0>();
  if (partial == nullptr) return;
  int64_t partial_row = blockIdx.x;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (paired) {
    // Block 1 of the cluster adds its sums into block 0's shared memory (the slots, free once
    // both blocks passed the first sync); block 0 adds them to its own and writes the pair's one
    // partial row.
    cooperative_groups::cluster_group cluster = cooperative_groups::this_cluster();
    auto* sums = reinterpret_cast<float*>(slots);  // (kMaxVecs, V, kThreads)
    cluster.sync();
    if (cluster.block_rank() == 1) {
      float* dst = cluster.map_shared_rank(sums, 0);
#pragma unroll
      for (int j = 0; j < kMaxVecs; ++j) {
#pragma unroll
        for (int i = 0; i < V; ++i) dst[(j * V + i) * kThreads + threadIdx.x] = acc[j][i];
      }
    }
    cluster.sync();
    if (cluster.block_rank() == 1) return;
#pragma unroll
    for (int j = 0; j < kMaxVecs; ++j) {
#pragma unroll
      for (int i = 0; i < V; ++i) acc[j][i] += sums[(j * V + i) * kThreads + threadIdx.x];
    }
    partial_row = blockIdx.x / 2;
  }
#endif
  float* out = partial + partial_row * cols;
#pragma unroll
  for (int j = 0; j < kMaxVecs; ++j) {
    const int c = threadIdx.x + j * kThreads;
    if (c < vecs) {
#pragma unroll
      for (int i = 0; i < V; ++i) out[c * V + i] = acc[j][i];
    }
  }
}

template <typename T>
__global__ void RmsNormKernel(const T* __restrict__ x, const T* __restrict__ weight,
                              T* __restrict__ y, float* __restrict__ rstd_out, int64_t cols,
                              float eps) {
  __shared__ float scratch[kThreads / 32];
  const int64_t row = blockIdx.x;
  const T* xr = x + row * cols;
  T* yr = y + row * cols;
  float sum = 0.0f;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    const float v = ToFloat(xr[c]);
    sum += v * v;
  }
  sum = BlockSum(sum, scratch);
  const float rstd = rsqrtf(sum / static_cast<float>(cols) + eps);
  if (threadIdx.x == 0) rstd_out[row] = rstd;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    Put(&yr[c], ToFloat(xr[c]) * rstd * ToFloat(weight[c]));
  }
}

template <typename T>
__global__ void RmsNormDxKernel(const T* __restrict__ dy, const T* __restrict__ x,
                                const T* __restrict__ weight, const float* __restrict__ rstd_in,
                                T* __restrict__ dx, int64_t cols) {
  __shared__ float scratch[kThreads / 32];
  const int64_t row = blockIdx.x;
  const int64_t base = row * cols;
  const float rstd = rstd_in[row];
  float dot = 0.0f;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    dot += ToFloat(dy[base + c]) * ToFloat(weight[c]) * ToFloat(x[base + c]) * rstd;
  }
  const float mean = BlockSum(dot, scratch) / static_cast<float>(cols);
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    const float xhat = ToFloat(x[base + c]) * rstd;
    const float g = ToFloat(dy[base + c]) * ToFloat(weight[c]);
    Put(&dx[base + c], rstd * (g - xhat * mean));
  }
}

// Scalar path: partial[g][c] = sum of dy * xhat over rows g, g + groups, ... (grid: column blocks
// x groups).
template <typename T>
__global__ void RmsNormDweightPartialKernel(const T* __restrict__ dy, const T* __restrict__ x,
                                            const float* __restrict__ rstd,
                                            float* __restrict__ partial, int64_t rows,
                                            int64_t cols) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  float sum = 0.0f;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    sum += ToFloat(dy[r * cols + c]) * ToFloat(x[r * cols + c]) * rstd[r];
  }
  partial[static_cast<int64_t>(blockIdx.y) * cols + c] = sum;
}

template <typename T>
absl::Status Forward(const RmsNormParams& p, cudaStream_t stream) {
  const auto grid = static_cast<unsigned>(p.rows);
  if (Vectorizable<T>(p.cols, {p.x, p.weight, p.y})) {
    const auto* x = static_cast<const T*>(p.x);
    const auto* weight = static_cast<const T*>(p.weight);
    auto* y = static_cast<T*>(p.y);
    switch (VecsPerThread<T>(p.cols)) {
      case 1:
        RmsNormVecKernel<T, 1><<<grid, kThreads, 0, stream>>>(x, weight, y, p.rstd, p.cols, p.eps);
        break;
      case 2:
        RmsNormVecKernel<T, 2><<<grid, kThreads, 0, stream>>>(x, weight, y, p.rstd, p.cols, p.eps);
        break;
      default:
        RmsNormVecKernel<T, 4><<<grid, kThreads, 0, stream>>>(x, weight, y, p.rstd, p.cols, p.eps);
    }
  } else {
    RmsNormKernel<T><<<grid, kThreads, 0, stream>>>(static_cast<const T*>(p.x),
                                                    static_cast<const T*>(p.weight),
                                                    static_cast<T*>(p.y), p.rstd, p.cols, p.eps);
  }
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

// Blocks of the backward, each writing one fp32 dweight partial row over its strided rows: at
// most 264, 2 per SM of an H100 or H200 (7% faster than ColumnPartialGroups' 4 per SM at 16384 x
// 4096 on an H100, 2026-12-05 in bench/RESULTS.md). It depends on the shape only, so the sums'
// order depends on the shape and on whether the code runs clusters (see Backward) only.
int64_t BackwardGroups(int64_t rows) { return rows < 264 ? rows : 264; }

template <typename T, int kMaxVecs>
absl::Status LaunchBackwardVec(unsigned grid, const T* dy, const T* x, const T* weight, T* dx,
                               float* sums, bool paired, const RmsNormBackwardParams& p,
                               cudaStream_t stream) {
  constexpr size_t kSmem = BackwardSmemBytes<kMaxVecs>();
  MIMO_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(RmsNormBackwardVecKernel<T, kMaxVecs>,
                                                 cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                 static_cast<int>(kSmem)));
  const ClusterLaunch launch(dim3(grid), dim3(kThreads), kSmem, stream, paired ? 2 : 1);
  MIMO_CUDA_RETURN_IF_ERROR(cudaLaunchKernelEx(&launch.config,
                                               RmsNormBackwardVecKernel<T, kMaxVecs>, dy, x, weight,
                                               p.rstd, dx, sums, p.rows, p.cols, paired));
  return absl::OkStatus();
}

template <typename T>
absl::Status Backward(const RmsNormBackwardParams& p, cudaStream_t stream) {
  const auto* dy = static_cast<const T*>(p.dy);
  const auto* x = static_cast<const T*>(p.x);
  const auto* weight = static_cast<const T*>(p.weight);
  auto* partial = static_cast<float*>(p.workspace);
  const int64_t groups = BackwardGroups(p.rows);
  bool paired = false;
  // The vector backward copies through cp.async (sm_80 code); older code takes the scalar path.
  const int arch = KernelArch<RmsNormBackwardVecKernel<T, 2>>();
  if (Vectorizable<T>(p.cols, {p.dy, p.x, p.weight, p.dx}) && arch >= 80) {
    auto* dx = static_cast<T*>(p.dx);
    float* sums = p.dweight != nullptr ? partial : nullptr;
    const auto grid = static_cast<unsigned>(groups);
    // Blocks in clusters of 2 add their dweight sums before writing them, where the block count
    // is even and the device runs clusters: half the partials' traffic and column sum (2.5%
    // faster at 16384 x 4096 on an H100, 2026-12-06 in bench/RESULTS.md).
    paired = sums != nullptr && groups % 2 == 0 && arch >= 90;  // Clusters: sm_90 code.
    switch (VecsPerThread<T>(p.cols)) {
      case 1:
        MIMO_RETURN_IF_ERROR(
            (LaunchBackwardVec<T, 1>(grid, dy, x, weight, dx, sums, paired, p, stream)));
        break;
      case 2:
        MIMO_RETURN_IF_ERROR(
            (LaunchBackwardVec<T, 2>(grid, dy, x, weight, dx, sums, paired, p, stream)));
        break;
      default:
        MIMO_RETURN_IF_ERROR(
            (LaunchBackwardVec<T, 4>(grid, dy, x, weight, dx, sums, paired, p, stream)));
    }
  } else {
    RmsNormDxKernel<T><<<static_cast<unsigned>(p.rows), kThreads, 0, stream>>>(
        dy, x, weight, p.rstd, static_cast<T*>(p.dx), p.cols);
    if (p.dweight != nullptr) {
      MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
      const dim3 grid(static_cast<unsigned>((p.cols + kThreads - 1) / kThreads),
                      static_cast<unsigned>(groups));
      RmsNormDweightPartialKernel<T>
          <<<grid, kThreads, 0, stream>>>(dy, x, p.rstd, partial, p.rows, p.cols);
    }
  }
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  if (p.dweight != nullptr) {
    EnqueueColumnSum(static_cast<const float*>(partial), p.dweight, paired ? groups / 2 : groups,
                     p.cols,
                     /*accumulate=*/false, stream);
    MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  }
  return absl::OkStatus();
}

}  // namespace

size_t RmsNormBackwardWorkspaceBytes(int64_t rows, int64_t cols) {
  return rows <= 0 || cols <= 0 ? 0
                                : static_cast<size_t>(BackwardGroups(rows) * cols) * sizeof(float);
}

absl::Status LaunchRmsNorm(const RmsNormParams& p, StreamHandle stream) {
  MIMO_RETURN_IF_ERROR(CheckRmsNorm(p));
  MIMO_RETURN_IF_ERROR(CheckRowsFitTheGrid("RmsNorm", p.rows));
  if (p.rows == 0) return absl::OkStatus();
  const auto s = static_cast<cudaStream_t>(stream);
  return p.dtype == DType::kF32 ? Forward<float>(p, s) : Forward<__nv_bfloat16>(p, s);
}

absl::Status LaunchRmsNormBackward(const RmsNormBackwardParams& p, StreamHandle stream) {
  MIMO_RETURN_IF_ERROR(CheckRmsNormBackward(p));
  MIMO_RETURN_IF_ERROR(CheckRowsFitTheGrid("RmsNormBackward", p.rows));
  const size_t needed = RmsNormBackwardWorkspaceBytes(p.rows, p.cols);
  if (p.dweight != nullptr &&
      (p.workspace_bytes < needed || (needed > 0 && p.workspace == nullptr))) {
    return absl::InvalidArgumentError(absl::StrCat("RmsNormBackward: the workspace has ",
                                                   p.workspace_bytes, " bytes, ", needed,
                                                   " are needed"));
  }
  const auto s = static_cast<cudaStream_t>(stream);
  if (p.rows == 0 && p.dweight != nullptr && p.cols > 0) {
    MIMO_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(p.dweight, 0, p.cols * sizeof(float), s));
    return absl::OkStatus();
  }
  if (p.rows == 0) return absl::OkStatus();
  return p.dtype == DType::kF32 ? Backward<float>(p, s) : Backward<__nv_bfloat16>(p, s);
}

}  // namespace mimo::kernels
