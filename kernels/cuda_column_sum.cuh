// Deterministic column sums of a row-major (rows, cols) matrix into fp32: bias gradients, and the
// final reduction of per-block partial sums.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/cuda_elements.cuh"

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

// Enqueues ColumnSumKernel over every column (cols > 0); the caller checks cudaGetLastError().
template <typename T>
void EnqueueColumnSum(const T* in, float* out, int64_t rows, int64_t cols, bool accumulate,
                      cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((cols + kColumnSumColumns - 1) / kColumnSumColumns));
  const dim3 block(kColumnSumColumns, kColumnSumLanes);
  ColumnSumKernel<T><<<grid, block, 0, stream>>>(in, out, rows, cols, accumulate);
}

}  // namespace mimo::kernels
