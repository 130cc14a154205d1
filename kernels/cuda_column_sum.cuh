// Deterministic column sums of a row-major (rows, cols) matrix into fp32: bias gradients, and the
// final reduction of per-block partial sums.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "kernels/cuda_elements.cuh"
#include "kernels/cuda_vector.cuh"

namespace mimo::kernels {

// Row groups of a two-stage column reduction (partials per group of strided rows, then
// ColumnSumKernel over the groups): at most 528, 4 blocks per SM of an H100; a number that
// depends on the shape only, so the sums' order does too.
inline int64_t ColumnPartialGroups(int64_t rows) { return rows < 528 ? rows : 528; }

inline constexpr int kColumnSumColumns = 32;  // Columns per block: a warp reads a row segment.
inline constexpr int kColumnSumLanes = 16;    // Partial sums per column, added in lane order.

// out[c] (+)= sum over r of in[r][c]: lane y of a column sums rows y, y + lanes, ..., then the
// lanes are added in order, so the result depends on the shape only, never on timing.
template <typename T>
__global__ void ColumnSumKernel(const T* __restrict__ in, float* __restrict__ out, int64_t rows,
                                int64_t cols, bool accumulate) {
  __shared__ float partial[kColumnSumLanes][kColumnSumColumns + 1];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kColumnSumColumns + threadIdx.x;
  float sum = 0.0f;
  if (c < cols) {
    for (int64_t r = threadIdx.y; r < rows; r += kColumnSumLanes) sum += ToFloat(in[r * cols + c]);
  }
  partial[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y != 0 || c >= cols) return;
  float total = 0.0f;
  for (int lane = 0; lane < kColumnSumLanes; ++lane) total += partial[lane][threadIdx.x];
  out[c] = accumulate ? out[c] + total : total;
}

// partial[g][c] = sum over rows r = g, g + groups, ... of in[r][c] (grid: column blocks of
// blockDim.x x groups): the first stage of a column sum over many rows.
template <typename T>
__global__ void ColumnPartialSumKernel(const T* __restrict__ in, float* __restrict__ partial,
                                       int64_t rows, int64_t cols) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  float sum = 0.0f;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) sum += ToFloat(in[r * cols + c]);
  partial[static_cast<int64_t>(blockIdx.y) * cols + c] = sum;
}

// ColumnPartialSumKernel for rows of whole 16-byte vectors: a thread sums kVecWidth<T> adjacent
// columns with one load a row, four rows' loads in flight; the same additions in the same order.
template <typename T>
__global__ void ColumnPartialSumVecKernel(const T* __restrict__ in, float* __restrict__ partial,
                                          int64_t rows, int64_t cols) {
  constexpr int V = kVecWidth<T>;
  const int64_t c = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * V;
  if (c >= cols) return;
  const int64_t step = gridDim.y;
  float sum[V];
#pragma unroll
  for (int i = 0; i < V; ++i) sum[i] = 0.0f;
  int64_t r = blockIdx.y;
  for (; r + 3 * step < rows; r += 4 * step) {
    float v[4][V];
#pragma unroll
    for (int u = 0; u < 4; ++u) LoadVec(in + (r + u * step) * cols + c, v[u]);
#pragma unroll
    for (int u = 0; u < 4; ++u) {
#pragma unroll
      for (int i = 0; i < V; ++i) sum[i] += v[u][i];
    }
  }
  for (; r < rows; r += step) {
    float v[V];
    LoadVec(in + r * cols + c, v);
#pragma unroll
    for (int i = 0; i < V; ++i) sum[i] += v[i];
  }
#pragma unroll
  for (int i = 0; i < V; ++i) partial[static_cast<int64_t>(blockIdx.y) * cols + c + i] = sum[i];
}

// Device scratch of EnqueueManyRowColumnSum: none up to ColumnPartialGroups' cap of rows (one
// stage is enough), else one fp32 row per group.
inline size_t ManyRowColumnSumWorkspaceBytes(int64_t rows, int64_t cols) {
  return rows <= 0 || cols <= 0 || ColumnPartialGroups(rows) == rows
             ? 0
             : static_cast<size_t>(ColumnPartialGroups(rows) * cols) * sizeof(float);
}

// Enqueues ColumnSumKernel over every column (cols > 0); the caller checks cudaGetLastError().
template <typename T>
void EnqueueColumnSum(const T* in, float* out, int64_t rows, int64_t cols, bool accumulate,
                      cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((cols + kColumnSumColumns - 1) / kColumnSumColumns));
  const dim3 block(kColumnSumColumns, kColumnSumLanes);
  ColumnSumKernel<T><<<grid, block, 0, stream>>>(in, out, rows, cols, accumulate);
}

// The same sums for any number of rows: with more rows than ColumnPartialGroups' cap, partial
// sums of the row groups first (ManyRowColumnSumWorkspaceBytes of `workspace`), so thousands of
// blocks read the matrix instead of one per 32 columns. The order depends on the shape only.
template <typename T>
void EnqueueManyRowColumnSum(const T* in, float* out, int64_t rows, int64_t cols, bool accumulate,
                             float* workspace, cudaStream_t stream) {
  if (ManyRowColumnSumWorkspaceBytes(rows, cols) == 0) {
    EnqueueColumnSum(in, out, rows, cols, accumulate, stream);
    return;
  }
  const int64_t groups = ColumnPartialGroups(rows);
  constexpr int V = kVecWidth<T>;
  if (cols % V == 0 && VecAligned(in)) {
    constexpr int kThreads = 64;  // 512 bf16 columns a block.
    const dim3 grid(static_cast<unsigned>((cols / V + kThreads - 1) / kThreads),
                    static_cast<unsigned>(groups));
    ColumnPartialSumVecKernel<T><<<grid, kThreads, 0, stream>>>(in, workspace, rows, cols);
  } else {
    constexpr int kThreads = 256;
    const dim3 grid(static_cast<unsigned>((cols + kThreads - 1) / kThreads),
                    static_cast<unsigned>(groups));
    ColumnPartialSumKernel<T><<<grid, kThreads, 0, stream>>>(in, workspace, rows, cols);
  }
  EnqueueColumnSum(static_cast<const float*>(workspace), out, groups, cols, accumulate, stream);
}

}  // namespace mimo::kernels
