// Embedding lookup, forward and backward: the CUDA kernels. The backward sorts (id, token) pairs
// with CUB's stable radix sort, then sums each run of equal ids in chunks of sorted positions
// (a frequent id's thousands of rows in parallel): the same additions, in the same order, as the
// CPU twin.
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

int64_t Chunks(int64_t tokens) {
  return (tokens + kEmbeddingBackwardChunk - 1) / kEmbeddingBackwardChunk;
}

// Floats of one of the per-chunk arrays (head, cont), padded to whole 256-byte blocks.
int64_t ChunkFloats(int64_t chunks, int64_t dim) {
  return static_cast<int64_t>(Align(static_cast<size_t>(chunks * dim) * sizeof(float)) /
                              sizeof(float));
}

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

// Sorted positions [c S, (c + 1) S) form chunk c (S = kEmbeddingBackwardChunk). Block (c, y)
// sums, for columns [256 y, 256 (y + 1)), each run's rows that lie in chunk c, in ascending token
// order from 0: a run that starts and ends in the chunk is added to dtable at once; the piece of
// a run that goes on past the chunk's end is its head (head[c]); the piece of a run that began
// before the chunk is a continuation (cont[c]). FinishRunsKernel then adds every long run's head
// and continuations to dtable in chunk order, so the additions depend on the ids only.
template <typename T>
__global__ void SumChunksKernel(const T* __restrict__ dout, const int32_t* __restrict__ keys,
                                const int32_t* __restrict__ tokens_of, float* __restrict__ dtable,
                                float* __restrict__ head, float* __restrict__ cont, int64_t vocab,
                                int64_t tokens, int64_t dim, int64_t first_id) {
  const int64_t d = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (d >= dim) return;
  const int64_t c = blockIdx.x;
  const int64_t begin = c * kEmbeddingBackwardChunk;
  const int64_t end =
      begin + kEmbeddingBackwardChunk < tokens ? begin + kEmbeddingBackwardChunk : tokens;
  for (int64_t i = begin; i < end;) {
    const int32_t key = keys[i];
    int64_t j = i + 1;
    while (j < end && keys[j] == key) ++j;  // [i, j): the run's piece in this chunk.
    const int64_t id = key - first_id;      // The table's row.
    if (id >= 0 && id < vocab) {
      float sum = 0.0f;
      int64_t k = i;
      constexpr int kAhead = 8;
      for (; k + kAhead <= j; k += kAhead) {
        float v[kAhead];
#pragma unroll
        for (int u = 0; u < kAhead; ++u) {
          v[u] = ToFloat(dout[static_cast<int64_t>(tokens_of[k + u]) * dim + d]);
        }
#pragma unroll
        for (int u = 0; u < kAhead; ++u) sum += v[u];
      }
      for (; k < j; ++k) sum += ToFloat(dout[static_cast<int64_t>(tokens_of[k]) * dim + d]);
      const bool starts = i == 0 || keys[i - 1] != key;
      const bool goes_on = j < tokens && keys[j] == key;
      if (!starts) {
        cont[c * dim + d] = sum;
      } else if (goes_on) {
        head[c * dim + d] = sum;
      } else {
        dtable[id * dim + d] += sum;
      }
    }
    i = j;
  }
}

// Block (c, y): when chunk c's last run goes on past the chunk and starts in it, adds its head
// and the continuations of chunks c + 1, c + 2, ... (as long as the run lasts) to dtable.
__global__ void FinishRunsKernel(const int32_t* __restrict__ keys, float* __restrict__ dtable,
                                 const float* __restrict__ head, const float* __restrict__ cont,
                                 int64_t vocab, int64_t tokens, int64_t dim, int64_t first_id) {
  const int64_t d = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (d >= dim) return;
  const int64_t c = blockIdx.x;
  const int64_t next = (c + 1) * kEmbeddingBackwardChunk;  // The next chunk's first position.
  if (next >= tokens) return;
  const int32_t key = keys[next - 1];
  const int64_t id = key - first_id;
  if (keys[next] != key || id < 0 || id >= vocab) return;
  // The run's head is chunk c's unless the run began before it: the keys are sorted, so that is
  // when the chunk's first position and the one before it hold the key too.
  const int64_t begin = next - kEmbeddingBackwardChunk;
  if (begin > 0 && keys[begin] == key && keys[begin - 1] == key) return;
  float total = dtable[id * dim + d] + head[c * dim + d];
  for (int64_t n = c + 1;; ++n) {
    total += cont[n * dim + d];
    const int64_t after = (n + 1) * kEmbeddingBackwardChunk;
    if (after >= tokens || keys[after] != key) break;
  }
  dtable[id * dim + d] = total;
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
  size_t temp_bytes = SortTempBytes(p.tokens);
  IotaKernel<<<GridStrideBlocks(p.tokens), kThreads, 0, stream>>>(iota, p.tokens);
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  MIMO_CUDA_RETURN_IF_ERROR(cub::DeviceRadixSort::SortPairs(
      temp, temp_bytes, p.ids, keys, iota, tokens_of, static_cast<int>(p.tokens), 0,
      static_cast<int>(sizeof(int32_t) * 8), stream));
  const int64_t chunks = Chunks(p.tokens);
  auto* head = reinterpret_cast<float*>(w + 3 * ids_bytes + Align(SortTempBytes(p.tokens)));
  float* cont = head + ChunkFloats(chunks, p.dim);
  const dim3 grid(static_cast<unsigned>(chunks),
                  static_cast<unsigned>((p.dim + kThreads - 1) / kThreads));
  SumChunksKernel<T><<<grid, kThreads, 0, stream>>>(static_cast<const T*>(p.dout), keys, tokens_of,
                                                    p.dtable, head, cont, p.vocab, p.tokens, p.dim,
                                                    p.first_id);
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  if (chunks > 1) {
    FinishRunsKernel<<<grid, kThreads, 0, stream>>>(keys, p.dtable, head, cont, p.vocab, p.tokens,
                                                    p.dim, p.first_id);
    MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  }
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

size_t EmbeddingBackwardWorkspaceBytes(int64_t tokens, int64_t dim) {
  if (tokens <= 0 || dim <= 0) return 0;
  return 3 * Align(static_cast<size_t>(tokens) * sizeof(int32_t)) + Align(SortTempBytes(tokens)) +
         2 * static_cast<size_t>(ChunkFloats(Chunks(tokens), dim)) * sizeof(float);
}

absl::Status LaunchEmbeddingBackward(const EmbeddingBackwardParams& p, StreamHandle stream) {
  MIMO_RETURN_IF_ERROR(CheckEmbeddingBackward(p));
  const bool rows = p.tokens * p.dim > 0;
  const size_t needed = rows ? EmbeddingBackwardWorkspaceBytes(p.tokens, p.dim) : 0;
  if (rows && (p.workspace == nullptr || p.workspace_bytes < needed)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "EmbeddingBackward: the workspace has ", p.workspace_bytes, " bytes, ", p.tokens,
        " tokens of width ", p.dim, " need ", needed, " (EmbeddingBackwardWorkspaceBytes)"));
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
