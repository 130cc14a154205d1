// Embedding lookup, forward and backward: the CUDA kernels. The backward sorts (id, token) pairs
// with CUB's stable radix sort, then the first token of each run of equal ids sums its run in
// ascending token order: the same additions, in the same order, as the CPU twin.
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cub/device/device_radix_sort.cuh>

#include "absl/strings/str_cat.h"
#include "kernels/cuda_elements.cuh"
#include "kernels/cuda_launch.h"
#include "kernels/cuda_status.h"
#include "kernels/embedding.h"

namespace mimo::kernels {
namespace {

constexpr int kThreads = 256;

size_t Align(size_t n) { return (n + 255) / 256 * 256; }

template <typename T>
__global__ void EmbeddingKernel(const T* __restrict__ table, const int32_t* __restrict__ ids,
                                T* __restrict__ out, int32_t* bad_ids, int64_t vocab,
                                int64_t tokens, int64_t dim, int64_t first_id) {
  const int64_t n = tokens * dim;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const int64_t t = i / dim, d = i % dim;
    const int64_t id = ids[t] - first_id;  // The table's row.
    const bool bad = id < 0 || id >= vocab;
    if (bad && d == 0 && bad_ids != nullptr) atomicAdd(bad_ids, 1);
    out[i] = bad ? T(0.0f) : table[id * dim + d];
  }
}

__global__ void IotaKernel(int32_t* __restrict__ out, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    out[i] = static_cast<int32_t>(i);
  }
}

// Block (b, y) handles sorted positions b, b + gridDim.x, ... and columns [256 y, 256 (y + 1)); a
// position that starts a run of equal ids sums the run's dout rows into dtable, one thread per
// column, in ascending token order. A frequent id makes a run of thousands of rows: the loads are
// issued eight at a time ahead of the (ordered) additions, and every column has its own thread.
template <typename T>
__global__ void SumRunsKernel(const T* __restrict__ dout, const int32_t* __restrict__ keys,
                              const int32_t* __restrict__ tokens_of, float* __restrict__ dtable,
                              int64_t vocab, int64_t tokens, int64_t dim, int64_t first_id) {
  const int64_t d = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (d >= dim) return;
  for (int64_t i = blockIdx.x; i < tokens; i += gridDim.x) {
    const int32_t key = keys[i];
    const int64_t id = key - first_id;  // The table's row.
    if ((i > 0 && keys[i - 1] == key) || id < 0 || id >= vocab) continue;
    int64_t end = i + 1;
    while (end < tokens && keys[end] == key) ++end;
    float sum = dtable[id * dim + d];
    int64_t j = i;
    constexpr int kAhead = 8;
    for (; j + kAhead <= end; j += kAhead) {
      float v[kAhead];
#pragma unroll
      for (int u = 0; u < kAhead; ++u) {
        v[u] = ToFloat(dout[static_cast<int64_t>(tokens_of[j + u]) * dim + d]);
      }
#pragma unroll
      for (int u = 0; u < kAhead; ++u) sum += v[u];
    }
    for (; j < end; ++j) sum += ToFloat(dout[static_cast<int64_t>(tokens_of[j]) * dim + d]);
    dtable[id * dim + d] = sum;
  }
}

size_t SortTempBytes(int64_t tokens) {
  size_t bytes = 0;
  cub::DeviceRadixSort::SortPairs(nullptr, bytes, static_cast<const int32_t*>(nullptr),
                                  static_cast<int32_t*>(nullptr),
                                  static_cast<const int32_t*>(nullptr),
                                  static_cast<int32_t*>(nullptr), static_cast<int>(tokens));
  return bytes;
}

template <typename T>
absl::Status Backward(const EmbeddingBackwardParams& p, cudaStream_t stream) {
  char* w = static_cast<char*>(p.workspace);
  const size_t ids_bytes = Align(static_cast<size_t>(p.tokens) * sizeof(int32_t));
  auto* keys = reinterpret_cast<int32_t*>(w);
  auto* iota = reinterpret_cast<int32_t*>(w + ids_bytes);
  auto* tokens_of = reinterpret_cast<int32_t*>(w + 2 * ids_bytes);
  void* temp = w + 3 * ids_bytes;
  size_t temp_bytes = p.workspace_bytes - 3 * ids_bytes;
  IotaKernel<<<GridStrideBlocks(p.tokens), kThreads, 0, stream>>>(iota, p.tokens);
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  MIMO_CUDA_RETURN_IF_ERROR(cub::DeviceRadixSort::SortPairs(
      temp, temp_bytes, p.ids, keys, iota, tokens_of, static_cast<int>(p.tokens), 0,
      static_cast<int>(sizeof(int32_t) * 8), stream));
  const dim3 grid(static_cast<unsigned>(std::min<int64_t>(p.tokens, 16384)),
                  static_cast<unsigned>((p.dim + kThreads - 1) / kThreads));
  SumRunsKernel<T><<<grid, kThreads, 0, stream>>>(static_cast<const T*>(p.dout), keys, tokens_of,
                                                  p.dtable, p.vocab, p.tokens, p.dim,
                                                  p.first_id);
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace

absl::Status LaunchEmbedding(const EmbeddingParams& p, StreamHandle stream) {
  MIMO_RETURN_IF_ERROR(CheckEmbedding(p));
  const int64_t n = p.tokens * p.dim;
  if (n == 0) return absl::OkStatus();
  const auto s = static_cast<cudaStream_t>(stream);
  if (p.dtype == DType::kF32) {
    EmbeddingKernel<float><<<GridStrideBlocks(n), kThreads, 0, s>>>(
        static_cast<const float*>(p.table), p.ids, static_cast<float*>(p.out), p.bad_ids, p.vocab,
        p.tokens, p.dim, p.first_id);
  } else {
    EmbeddingKernel<__nv_bfloat16><<<GridStrideBlocks(n), kThreads, 0, s>>>(
        static_cast<const __nv_bfloat16*>(p.table), p.ids, static_cast<__nv_bfloat16*>(p.out),
        p.bad_ids, p.vocab, p.tokens, p.dim, p.first_id);
  }
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

size_t EmbeddingBackwardWorkspaceBytes(int64_t tokens) {
  if (tokens <= 0) return 0;
  return 3 * Align(static_cast<size_t>(tokens) * sizeof(int32_t)) + Align(SortTempBytes(tokens));
}

absl::Status LaunchEmbeddingBackward(const EmbeddingBackwardParams& p, StreamHandle stream) {
  MIMO_RETURN_IF_ERROR(CheckEmbeddingBackward(p));
  const bool rows = p.tokens * p.dim > 0;
  const size_t needed = rows ? EmbeddingBackwardWorkspaceBytes(p.tokens) : 0;
  if (rows && (p.workspace == nullptr || p.workspace_bytes < needed)) {
    return absl::InvalidArgumentError(
        absl::StrCat("EmbeddingBackward: the workspace has ", p.workspace_bytes, " bytes, ",
                     p.tokens, " tokens need ", needed, " (EmbeddingBackwardWorkspaceBytes)"));
  }
  const auto s = static_cast<cudaStream_t>(stream);
  if (!p.accumulate && p.vocab * p.dim > 0) {
    MIMO_CUDA_RETURN_IF_ERROR(
        cudaMemsetAsync(p.dtable, 0, static_cast<size_t>(p.vocab * p.dim) * sizeof(float), s));
  }
  if (!rows) return absl::OkStatus();
  return p.dtype == DType::kF32 ? Backward<float>(p, s) : Backward<__nv_bfloat16>(p, s);
}

}  // namespace mimo::kernels
