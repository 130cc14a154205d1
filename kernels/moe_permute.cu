// MoE token permutation: the CUDA kernels. The map is integer work in three passes (per-chunk
// expert histograms, a scan over chunks and experts, then one warp per chunk ranking its pairs
// in order with __match_any_sync), so it needs no host synchronization and gives the CPU twin's
// rows exactly. The data kernels give each row (or token) one warp whose lanes stride
// over the hidden features; sums run in the CPU twin's order with rounded (uncontracted) fp32
// operations, so results are bitwise equal to it. Where rows are whole 16-byte vectors (hidden a
// multiple of 8 bf16 or 4 f32, buffers 16-byte aligned) the lanes move 16 bytes at a time; each
// element's arithmetic is the same.
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <initializer_list>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cuda_elements.cuh"
#include "kernels/cuda_status.h"
#include "kernels/cuda_vector.cuh"
#include "kernels/moe_permute.h"

namespace mimo::kernels {
namespace {

constexpr int kChunk = 1024;  // Pairs per chunk of the map.
constexpr int kWarps = 8;     // Warps per block of the data kernels.

int64_t Chunks(int64_t pairs) { return (pairs + kChunk - 1) / kChunk; }
size_t Align256(size_t n) { return (n + 255) / 256 * 256; }
unsigned WarpBlocks(int64_t n) { return static_cast<unsigned>((n + kWarps - 1) / kWarps); }

__global__ void HistogramKernel(const int32_t* __restrict__ indices, int64_t pairs, int64_t experts,
                                int32_t* __restrict__ chunk_counts) {
  extern __shared__ int32_t hist[];
  for (int64_t e = threadIdx.x; e < experts; e += blockDim.x) hist[e] = 0;
  __syncthreads();
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * kChunk;
  for (int64_t i = begin + threadIdx.x; i < begin + kChunk && i < pairs; i += blockDim.x) {
    const int32_t e = indices[i];
    if (e >= 0 && e < experts) atomicAdd(hist + e, 1);
  }
  __syncthreads();
  for (int64_t e = threadIdx.x; e < experts; e += blockDim.x) {
    chunk_counts[blockIdx.x * experts + e] = hist[e];
  }
}

// One block: each expert's start within each chunk, then the padded expert offsets.
__global__ void ScanKernel(const int32_t* __restrict__ chunk_counts, int64_t chunks,
                           int64_t experts, int64_t align, int32_t* __restrict__ chunk_base,
                           int32_t* __restrict__ offsets) {
  extern __shared__ int32_t count[];
  for (int64_t e = threadIdx.x; e < experts; e += blockDim.x) {
    int32_t running = 0;
    for (int64_t c = 0; c < chunks; ++c) {
      chunk_base[c * experts + e] = running;
      running += chunk_counts[c * experts + e];
    }
    count[e] = running;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int32_t at = 0;
    offsets[0] = 0;
    for (int64_t e = 0; e < experts; ++e) {
      at += static_cast<int32_t>((count[e] + align - 1) / align * align);
      offsets[e + 1] = at;
    }
  }
}

// One warp per chunk, 32 pairs a step: a pair's rank among the earlier pairs of its expert is
// the chunk's count so far plus its rank among this step's lanes with the same expert.
__global__ void AssignKernel(const int32_t* __restrict__ indices, int64_t pairs, int64_t experts,
                             const int32_t* __restrict__ chunk_base,
                             const int32_t* __restrict__ offsets, int32_t* __restrict__ rows,
                             int32_t* __restrict__ pair_of_row) {
  extern __shared__ int32_t seen[];
  const int lane = threadIdx.x;
  for (int64_t e = lane; e < experts; e += 32) seen[e] = 0;
  __syncwarp();
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * kChunk;
  for (int64_t step = begin; step < begin + kChunk && step < pairs; step += 32) {
    const int64_t i = step + lane;
    const int32_t e = i < pairs ? indices[i] : -1;
    const bool valid = e >= 0 && e < experts;
    const unsigned peers = __match_any_sync(0xffffffffu, valid ? e : -1);
    const int rank = __popc(peers & ((1u << lane) - 1u));
    if (valid) {
      const int32_t row = offsets[e] + chunk_base[blockIdx.x * experts + e] + seen[e] + rank;
      rows[i] = row;
      pair_of_row[row] = static_cast<int32_t>(i);
    } else if (i < pairs) {
      rows[i] = -1;
    }
    __syncwarp();
    if (valid && __ffs(peers) - 1 == lane) seen[e] += __popc(peers);
    __syncwarp();
  }
}

// One warp per output row.
template <typename T>
__global__ void PermuteKernel(const T* __restrict__ x, const int32_t* __restrict__ pair_of_row,
                              T* __restrict__ out, int64_t top_k, int64_t hidden,
                              int64_t capacity) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (r >= capacity) return;
  const int32_t pair = pair_of_row[r];
  const T* src = pair >= 0 ? x + pair / top_k * hidden : nullptr;
  for (int64_t c = threadIdx.x % 32; c < hidden; c += 32) {
    Put(out + r * hidden + c, src != nullptr ? ToFloat(src[c]) : 0.0f);
  }
}

// One warp per token: dx[t] = the sum of its pairs' rows, in choice order.
template <typename T>
__global__ void PermuteBackwardKernel(const T* __restrict__ dout, const int32_t* __restrict__ rows,
                                      T* __restrict__ dx, int64_t tokens, int64_t top_k,
                                      int64_t hidden) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (t >= tokens) return;
  for (int64_t c = threadIdx.x % 32; c < hidden; c += 32) {
    float sum = 0.0f;
    for (int64_t j = 0; j < top_k; ++j) {
      const int32_t row = rows[t * top_k + j];
      if (row >= 0) sum = __fadd_rn(sum, ToFloat(dout[row * hidden + c]));
    }
    Put(dx + t * hidden + c, sum);
  }
}

// One warp per token: y[t] = sum_j probs[t, j] h[rows[t, j]].
template <typename T>
__global__ void UnpermuteKernel(const T* __restrict__ h, const int32_t* __restrict__ rows,
                                const float* __restrict__ probs, T* __restrict__ y, int64_t tokens,
                                int64_t top_k, int64_t hidden) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (t >= tokens) return;
  for (int64_t c = threadIdx.x % 32; c < hidden; c += 32) {
    float sum = 0.0f;
    for (int64_t j = 0; j < top_k; ++j) {
      const int32_t row = rows[t * top_k + j];
      if (row >= 0) {
        sum = __fadd_rn(sum, __fmul_rn(probs[t * top_k + j], ToFloat(h[row * hidden + c])));
      }
    }
    Put(y + t * hidden + c, sum);
  }
}

// The vector forms of the kernels above: lane l handles elements [8l, 8l + 8) (bf16) or
// [4l, 4l + 4) (f32) of each 32-vector stride.
template <typename T>
__global__ void PermuteVecKernel(const T* __restrict__ x, const int32_t* __restrict__ pair_of_row,
                                 T* __restrict__ out, int64_t top_k, int64_t hidden,
                                 int64_t capacity) {
  constexpr int W = kVecWidth<T>;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (r >= capacity) return;
  const int32_t pair = pair_of_row[r];
  for (int64_t c = (threadIdx.x % 32) * W; c < hidden; c += 32 * W) {
    const uint4 v = pair >= 0 ? *reinterpret_cast<const uint4*>(x + pair / top_k * hidden + c)
                              : make_uint4(0, 0, 0, 0);
    *reinterpret_cast<uint4*>(out + r * hidden + c) = v;
  }
}

// The permutation in token order (MoePermuteParams::rows given): one warp per token reads its row
// of x once and writes it to each of its pairs' rows.
template <typename T, bool kVec>
__global__ void PermuteByTokenKernel(const T* __restrict__ x, const int32_t* __restrict__ rows,
                                     T* __restrict__ out, int64_t tokens, int64_t top_k,
                                     int64_t hidden) {
  constexpr int W = kVec ? kVecWidth<T> : 1;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (t >= tokens) return;
  const int32_t* mine = rows + t * top_k;
  for (int64_t c = (threadIdx.x % 32) * W; c < hidden; c += 32 * W) {
    if constexpr (kVec) {
      const uint4 v = *reinterpret_cast<const uint4*>(x + t * hidden + c);
      for (int64_t j = 0; j < top_k; ++j) {
        if (mine[j] >= 0) *reinterpret_cast<uint4*>(out + mine[j] * hidden + c) = v;
      }
    } else {
      const float v = ToFloat(x[t * hidden + c]);  // As the scalar gather (and the CPU twin).
      for (int64_t j = 0; j < top_k; ++j) {
        if (mine[j] >= 0) Put(out + mine[j] * hidden + c, v);
      }
    }
  }
}

template <typename T>
__global__ void PermuteBackwardVecKernel(const T* __restrict__ dout,
                                         const int32_t* __restrict__ rows, T* __restrict__ dx,
                                         int64_t tokens, int64_t top_k, int64_t hidden) {
  constexpr int W = kVecWidth<T>;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (t >= tokens) return;
  for (int64_t c = (threadIdx.x % 32) * W; c < hidden; c += 32 * W) {
    float sum[W] = {};
    for (int64_t j = 0; j < top_k; ++j) {
      const int32_t row = rows[t * top_k + j];
      if (row < 0) continue;
      float v[W];
      LoadVec(dout + row * hidden + c, v);
#pragma unroll
      for (int i = 0; i < W; ++i) sum[i] = __fadd_rn(sum[i], v[i]);
    }
    StoreVec(dx + t * hidden + c, sum);
  }
}

template <typename T>
__global__ void UnpermuteVecKernel(const T* __restrict__ h, const int32_t* __restrict__ rows,
                                   const float* __restrict__ probs, T* __restrict__ y,
                                   int64_t tokens, int64_t top_k, int64_t hidden) {
  constexpr int W = kVecWidth<T>;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (t >= tokens) return;
  for (int64_t c = (threadIdx.x % 32) * W; c < hidden; c += 32 * W) {
    float sum[W] = {};
    for (int64_t j = 0; j < top_k; ++j) {
      const int32_t row = rows[t * top_k + j];
      if (row < 0) continue;
      const float p = probs[t * top_k + j];
      float v[W];
      LoadVec(h + row * hidden + c, v);
#pragma unroll
      for (int i = 0; i < W; ++i) sum[i] = __fadd_rn(sum[i], __fmul_rn(p, v[i]));
    }
    StoreVec(y + t * hidden + c, sum);
  }
}

// One warp per token of the unpermutation's backward: for each pair (t, j) with a row, dprobs =
// dot(dy[t], h[row]) and dh[row] = probs * dy[t], in one pass over dy[t] and h[row]. Lane l sums
// the products of elements l * W .. l * W + W - 1 of each 32 * W stride in order (W: the elements
// of a 16-byte vector), then the lanes meet in an xor butterfly: the order the CPU twin takes.
// kVec moves whole 16-byte vectors; otherwise single elements in the same order.
template <typename T, bool kVec>
__global__ void UnpermuteBackwardKernel(const T* __restrict__ dy, const T* __restrict__ h,
                                        const int32_t* __restrict__ rows,
                                        const float* __restrict__ probs, T* __restrict__ dh,
                                        float* __restrict__ dprobs, int64_t tokens, int64_t top_k,
                                        int64_t hidden) {
  constexpr int W = kVecWidth<T>;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (t >= tokens) return;
  const int lane = threadIdx.x % 32;
  const T* a = dy + t * hidden;
  for (int64_t j = 0; j < top_k; ++j) {
    const int64_t pair = t * top_k + j;
    const int32_t row = rows[pair];
    if (row < 0) {
      if (lane == 0) dprobs[pair] = 0.0f;
      continue;
    }
    const float p = probs[pair];
    const T* b = h + row * hidden;
    T* out = dh + row * hidden;
    float sum = 0.0f;
    for (int64_t base = lane * W; base < hidden; base += 32 * W) {
      if constexpr (kVec) {
        float u[W], v[W];
        LoadVec(a + base, u);
        LoadVec(b + base, v);
#pragma unroll
        for (int i = 0; i < W; ++i) {
          sum = __fadd_rn(sum, __fmul_rn(u[i], v[i]));
          u[i] = __fmul_rn(p, u[i]);
        }
        StoreVec(out + base, u);
      } else {
        for (int64_t c = base; c < base + W && c < hidden; ++c) {
          const float u = ToFloat(a[c]);
          sum = __fadd_rn(sum, __fmul_rn(u, ToFloat(b[c])));
          Put(out + c, __fmul_rn(p, u));
        }
      }
    }
    for (int offset = 16; offset > 0; offset /= 2) {
      sum = __fadd_rn(sum, __shfl_xor_sync(0xffffffffu, sum, offset));
    }
    if (lane == 0) dprobs[pair] = sum;
  }
}

// Zeros the rows r < capacity that no pair fills (pair_of_row[r] < 0: experts' padding, dropped
// pairs, the tail): a warp per 32 rows finds them with a ballot and clears each together.
template <typename T, bool kVec>
__global__ void ZeroUnusedRowsKernel(const int32_t* __restrict__ pair_of_row, T* __restrict__ out,
                                     int64_t hidden, int64_t capacity) {
  constexpr int W = kVecWidth<T>;
  const int64_t first = (static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32) * 32;
  if (first >= capacity) return;
  const int lane = threadIdx.x % 32;
  const bool unused = first + lane < capacity && pair_of_row[first + lane] < 0;
  // Each set bit an unused row; the lowest is cleared after its row is.
  for (uint32_t pending = __ballot_sync(0xffffffffu, unused); pending != 0;
       pending &= pending - 1) {
    T* row = out + (first + __ffs(pending) - 1) * hidden;
    if constexpr (kVec) {
      for (int64_t c = lane * W; c < hidden; c += 32 * W) {
        *reinterpret_cast<uint4*>(row + c) = make_uint4(0, 0, 0, 0);
      }
    } else {
      for (int64_t c = lane; c < hidden; c += 32) Put(row + c, 0.0f);
    }
  }
}

// ZeroUnusedRowsKernel over rows [0, capacity) of `out` (capacity > 0).
template <typename T, bool kVec>
void EnqueueZeroUnusedRows(const int32_t* pair_of_row, T* out, int64_t hidden, int64_t capacity,
                           cudaStream_t s) {
  ZeroUnusedRowsKernel<T, kVec>
      <<<WarpBlocks((capacity + 31) / 32), 32 * kWarps, 0, s>>>(pair_of_row, out, hidden, capacity);
}

template <typename T, bool kVec>
void EnqueueUnpermuteBackward(const MoeUnpermuteBackwardParams& p, cudaStream_t s) {
  if (p.capacity > 0 && p.hidden > 0) {
    EnqueueZeroUnusedRows<T, kVec>(p.pair_of_row, static_cast<T*>(p.dh), p.hidden, p.capacity, s);
  }
  if (p.tokens > 0) {
    UnpermuteBackwardKernel<T, kVec><<<WarpBlocks(p.tokens), 32 * kWarps, 0, s>>>(
        static_cast<const T*>(p.dy), static_cast<const T*>(p.h), p.rows, p.probs,
        static_cast<T*>(p.dh), p.dprobs, p.tokens, p.top_k, p.hidden);
  }
}

// Whether rows of `hidden` elements of `dtype` in these buffers are whole aligned vectors.
bool Vectorizable(DType dtype, int64_t hidden, std::initializer_list<const void*> buffers) {
  if (hidden % (dtype == DType::kBF16 ? 8 : 4) != 0) return false;
  for (const void* b : buffers) {
    if (!VecAligned(b)) return false;
  }
  return true;
}

}  // namespace

size_t MoePermuteMapWorkspaceBytes(int64_t pairs, int64_t experts) {
  return 2 * Align256(sizeof(int32_t) * Chunks(pairs) * experts);
}

absl::Status LaunchMoePermuteMap(const MoePermuteMapParams& p, StreamHandle stream) {
  MIMO_RETURN_IF_ERROR(CheckMoePermuteMap(p));
  const int64_t pairs = p.tokens * p.top_k, chunks = Chunks(pairs);
  const size_t need = MoePermuteMapWorkspaceBytes(pairs, p.experts);
  if (chunks > 0 && (p.workspace == nullptr || p.workspace_bytes < need)) {
    return absl::InvalidArgumentError(
        absl::StrCat("MoePermuteMap: needs ", need, " workspace bytes, got ", p.workspace_bytes));
  }
  const auto s = static_cast<cudaStream_t>(stream);
  MIMO_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(p.pair_of_row, 0xff, sizeof(int32_t) * p.capacity, s));
  const size_t shared = sizeof(int32_t) * p.experts;
  if (chunks == 0) {  // No pairs: every expert empty.
    MIMO_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(p.offsets, 0, sizeof(int32_t) * (p.experts + 1), s));
    return absl::OkStatus();
  }
  auto* chunk_counts = static_cast<int32_t*>(p.workspace);
  auto* chunk_base = reinterpret_cast<int32_t*>(static_cast<char*>(p.workspace) + need / 2);
  HistogramKernel<<<static_cast<unsigned>(chunks), 256, shared, s>>>(p.indices, pairs, p.experts,
                                                                     chunk_counts);
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  ScanKernel<<<1, 1024, shared, s>>>(chunk_counts, chunks, p.experts, p.align, chunk_base,
                                     p.offsets);
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  AssignKernel<<<static_cast<unsigned>(chunks), 32, shared, s>>>(
      p.indices, pairs, p.experts, chunk_base, p.offsets, p.rows, p.pair_of_row);
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

template <typename T, bool kVec>
void EnqueuePermuteByToken(const MoePermuteParams& p, cudaStream_t s) {
  EnqueueZeroUnusedRows<T, kVec>(p.pair_of_row, static_cast<T*>(p.out), p.hidden, p.capacity, s);
  if (p.tokens > 0) {
    PermuteByTokenKernel<T, kVec><<<WarpBlocks(p.tokens), 32 * kWarps, 0, s>>>(
        static_cast<const T*>(p.x), p.rows, static_cast<T*>(p.out), p.tokens, p.top_k, p.hidden);
  }
}

absl::Status LaunchMoePermute(const MoePermuteParams& p, StreamHandle stream) {
  MIMO_RETURN_IF_ERROR(CheckMoePermute(p));
  if (p.capacity == 0 || p.hidden == 0) return absl::OkStatus();
  const auto s = static_cast<cudaStream_t>(stream);
  const unsigned blocks = WarpBlocks(p.capacity);
  if (p.rows != nullptr) {
    const bool vec = Vectorizable(p.dtype, p.hidden, {p.x, p.out});
    if (p.dtype == DType::kBF16) {
      vec ? EnqueuePermuteByToken<__nv_bfloat16, true>(p, s)
          : EnqueuePermuteByToken<__nv_bfloat16, false>(p, s);
    } else {
      vec ? EnqueuePermuteByToken<float, true>(p, s) : EnqueuePermuteByToken<float, false>(p, s);
    }
  } else if (Vectorizable(p.dtype, p.hidden, {p.x, p.out})) {
    if (p.dtype == DType::kBF16) {
      PermuteVecKernel<<<blocks, 32 * kWarps, 0, s>>>(
          static_cast<const __nv_bfloat16*>(p.x), p.pair_of_row, static_cast<__nv_bfloat16*>(p.out),
          p.top_k, p.hidden, p.capacity);
    } else {
      PermuteVecKernel<<<blocks, 32 * kWarps, 0, s>>>(static_cast<const float*>(p.x), p.pair_of_row,
                                                      static_cast<float*>(p.out), p.top_k, p.hidden,
                                                      p.capacity);
    }
  } else if (p.dtype == DType::kBF16) {
    PermuteKernel<<<blocks, 32 * kWarps, 0, s>>>(static_cast<const __nv_bfloat16*>(p.x),
                                                 p.pair_of_row, static_cast<__nv_bfloat16*>(p.out),
                                                 p.top_k, p.hidden, p.capacity);
  } else {
    PermuteKernel<<<blocks, 32 * kWarps, 0, s>>>(static_cast<const float*>(p.x), p.pair_of_row,
                                                 static_cast<float*>(p.out), p.top_k, p.hidden,
                                                 p.capacity);
  }
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

absl::Status LaunchMoePermuteBackward(const MoePermuteBackwardParams& p, StreamHandle stream) {
  MIMO_RETURN_IF_ERROR(CheckMoePermuteBackward(p));
  if (p.tokens == 0 || p.hidden == 0) return absl::OkStatus();
  const auto s = static_cast<cudaStream_t>(stream);
  const unsigned blocks = WarpBlocks(p.tokens);
  if (Vectorizable(p.dtype, p.hidden, {p.dout, p.dx})) {
    if (p.dtype == DType::kBF16) {
      PermuteBackwardVecKernel<<<blocks, 32 * kWarps, 0, s>>>(
          static_cast<const __nv_bfloat16*>(p.dout), p.rows, static_cast<__nv_bfloat16*>(p.dx),
          p.tokens, p.top_k, p.hidden);
    } else {
      PermuteBackwardVecKernel<<<blocks, 32 * kWarps, 0, s>>>(static_cast<const float*>(p.dout),
                                                              p.rows, static_cast<float*>(p.dx),
                                                              p.tokens, p.top_k, p.hidden);
    }
  } else if (p.dtype == DType::kBF16) {
    PermuteBackwardKernel<<<blocks, 32 * kWarps, 0, s>>>(static_cast<const __nv_bfloat16*>(p.dout),
                                                         p.rows, static_cast<__nv_bfloat16*>(p.dx),
                                                         p.tokens, p.top_k, p.hidden);
  } else {
    PermuteBackwardKernel<<<blocks, 32 * kWarps, 0, s>>>(static_cast<const float*>(p.dout), p.rows,
                                                         static_cast<float*>(p.dx), p.tokens,
                                                         p.top_k, p.hidden);
  }
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

absl::Status LaunchMoeUnpermute(const MoeUnpermuteParams& p, StreamHandle stream) {
  MIMO_RETURN_IF_ERROR(CheckMoeUnpermute(p));
  if (p.tokens == 0 || p.hidden == 0) return absl::OkStatus();
  const auto s = static_cast<cudaStream_t>(stream);
  const unsigned blocks = WarpBlocks(p.tokens);
  if (Vectorizable(p.dtype, p.hidden, {p.h, p.y})) {
    if (p.dtype == DType::kBF16) {
      UnpermuteVecKernel<<<blocks, 32 * kWarps, 0, s>>>(
          static_cast<const __nv_bfloat16*>(p.h), p.rows, p.probs, static_cast<__nv_bfloat16*>(p.y),
          p.tokens, p.top_k, p.hidden);
    } else {
      UnpermuteVecKernel<<<blocks, 32 * kWarps, 0, s>>>(static_cast<const float*>(p.h), p.rows,
                                                        p.probs, static_cast<float*>(p.y), p.tokens,
                                                        p.top_k, p.hidden);
    }
  } else if (p.dtype == DType::kBF16) {
    UnpermuteKernel<<<blocks, 32 * kWarps, 0, s>>>(static_cast<const __nv_bfloat16*>(p.h), p.rows,
                                                   p.probs, static_cast<__nv_bfloat16*>(p.y),
                                                   p.tokens, p.top_k, p.hidden);
  } else {
    UnpermuteKernel<<<blocks, 32 * kWarps, 0, s>>>(static_cast<const float*>(p.h), p.rows, p.probs,
                                                   static_cast<float*>(p.y), p.tokens, p.top_k,
                                                   p.hidden);
  }
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

absl::Status LaunchMoeUnpermuteBackward(const MoeUnpermuteBackwardParams& p, StreamHandle stream) {
  MIMO_RETURN_IF_ERROR(CheckMoeUnpermuteBackward(p));
  const auto s = static_cast<cudaStream_t>(stream);
  const bool vec = Vectorizable(p.dtype, p.hidden, {p.dy, p.h, p.dh});
  if (p.dtype == DType::kBF16) {
    vec ? EnqueueUnpermuteBackward<__nv_bfloat16, true>(p, s)
        : EnqueueUnpermuteBackward<__nv_bfloat16, false>(p, s);
  } else {
    vec ? EnqueueUnpermuteBackward<float, true>(p, s)
        : EnqueueUnpermuteBackward<float, false>(p, s);
  }
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace mimo::kernels
