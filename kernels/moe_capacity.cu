// MoE token dropping: the CUDA kernels. The pairs are grouped by expert with the permutation map
// (token order within an expert); the position policy drops the pairs ranked at or past the
// capacity there, the weight policy first sorts all pairs by (expert, weight descending) with one
// stable CUB radix sort of 64-bit keys (no host synchronization, any number of experts), then
// drops each expert's sorted pairs past the capacity.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cub/device/device_radix_sort.cuh>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cuda_status.h"
#include "kernels/moe_capacity.h"
#include "kernels/moe_permute.h"

namespace mimo::kernels {
namespace {

constexpr int kThreads = 256;

size_t Align256(size_t n) { return (n + 255) / 256 * 256; }
unsigned Blocks(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

// The scratch's parts, each 256-byte aligned.
struct Layout {
  size_t rows, offsets, pair_of_row, map, keys_in, keys_out, values_in, values_out, sort, total;
};

// Key bits: the expert (up to 1024, and 1024 for none) above 32 bits of weight.
constexpr int kKeyBits = 32 + 11;

size_t SortTempBytes(int64_t pairs) {
  size_t bytes = 0;
  cub::DeviceRadixSort::SortPairs(
      nullptr, bytes, static_cast<const uint64_t*>(nullptr), static_cast<uint64_t*>(nullptr),
      static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr), static_cast<int>(pairs),
      0, kKeyBits);
  return bytes;
}

Layout LayoutOf(int64_t pairs, int64_t experts) {
  Layout l{};
  const size_t ints = Align256(sizeof(int32_t) * pairs);
  l.rows = 0;
  l.offsets = l.rows + ints;
  l.pair_of_row = l.offsets + Align256(sizeof(int32_t) * (experts + 1));
  l.map = l.pair_of_row + ints;
  l.keys_in = l.map + Align256(MoePermuteMapWorkspaceBytes(pairs, experts));
  l.keys_out = l.keys_in + Align256(sizeof(uint64_t) * pairs);
  l.values_in = l.keys_out + Align256(sizeof(uint64_t) * pairs);
  l.values_out = l.values_in + ints;
  l.sort = l.values_out + ints;
  l.total = l.sort + Align256(SortTempBytes(pairs));
  return l;
}

// Position policy: a pair's rank in its expert is its row less the expert's first row.
__global__ void DropByPositionKernel(const int32_t* __restrict__ indices,
                                     const int32_t* __restrict__ rows,
                                     const int32_t* __restrict__ offsets,
                                     int32_t* __restrict__ kept, int64_t pairs, int64_t experts,
                                     int64_t capacity) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= pairs) return;
  const int32_t e = indices[i];
  const bool valid = e >= 0 && e < experts;
  kept[i] = valid && rows[i] - offsets[e] < capacity ? e : -1;
}

// Weight policy, step 1: each pair's key -- its expert (`experts` for none), then its weight
// descending (the float's bits mapped to an unsigned order, inverted) -- and its index; the valid
// indices kept. A stable ascending sort then gives each expert's pairs by weight, ties in order.
__global__ void KeysKernel(const int32_t* __restrict__ indices, const float* __restrict__ probs,
                           uint64_t* __restrict__ keys, int32_t* __restrict__ pair,
                           int32_t* __restrict__ kept, int64_t pairs, int64_t experts) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= pairs) return;
  const int32_t e = indices[i];
  const bool valid = e >= 0 && e < experts;
  const uint32_t bits = __float_as_uint(probs[i] + 0.0f);  // -0 as +0, as the CPU compares.
  const uint32_t ordered = bits & 0x80000000u ? ~bits : bits | 0x80000000u;  // Ascending order.
  keys[i] = (static_cast<uint64_t>(valid ? e : experts) << 32) | static_cast<uint32_t>(~ordered);
  pair[i] = static_cast<int32_t>(i);
  kept[i] = valid ? e : -1;
}

// Weight policy, step 2: one block per expert drops its sorted pairs past the capacity.
__global__ void DropSortedKernel(const int32_t* __restrict__ offsets,
                                 const int32_t* __restrict__ sorted_pairs,
                                 int32_t* __restrict__ kept, int64_t capacity) {
  const int64_t begin = offsets[blockIdx.x] + capacity, end = offsets[blockIdx.x + 1];
  for (int64_t s = begin + threadIdx.x; s < end; s += blockDim.x) kept[sorted_pairs[s]] = -1;
}

}  // namespace

size_t MoeCapacityDropWorkspaceBytes(int64_t pairs, int64_t experts) {
  return LayoutOf(pairs, experts).total;
}

absl::Status LaunchMoeCapacityDrop(const MoeCapacityDropParams& p, StreamHandle stream) {
  MIMO_RETURN_IF_ERROR(CheckMoeCapacityDrop(p));
  const int64_t pairs = p.tokens * p.top_k;
  if (pairs == 0) return absl::OkStatus();
  // A capacity above the pairs drops nothing, as it says; clamped, the kernels' row arithmetic
  // cannot overflow (a caller's "no limit" of INT64_MAX).
  const int64_t capacity = std::min(p.capacity, pairs);
  const Layout l = LayoutOf(pairs, p.experts);
  if (p.workspace == nullptr || p.workspace_bytes < l.total) {
    return absl::InvalidArgumentError(absl::StrCat("MoeCapacityDrop: needs ", l.total,
                                                   " workspace bytes, got ", p.workspace_bytes));
  }
  const auto s = static_cast<cudaStream_t>(stream);
  char* w = static_cast<char*>(p.workspace);
  auto* rows = reinterpret_cast<int32_t*>(w + l.rows);
  auto* offsets = reinterpret_cast<int32_t*>(w + l.offsets);
  auto* pair_of_row = reinterpret_cast<int32_t*>(w + l.pair_of_row);
  MIMO_RETURN_IF_ERROR(LaunchMoePermuteMap({.indices = p.indices,
                                            .rows = rows,
                                            .offsets = offsets,
                                            .pair_of_row = pair_of_row,
                                            .tokens = p.tokens,
                                            .top_k = p.top_k,
                                            .experts = p.experts,
                                            .align = 1,
                                            .capacity = pairs,
                                            .workspace = w + l.map,
                                            .workspace_bytes = l.keys_in - l.map},
                                           stream));
  if (p.policy == TokenDropPolicy::kPosition) {
    DropByPositionKernel<<<Blocks(pairs), kThreads, 0, s>>>(p.indices, rows, offsets, p.kept, pairs,
                                                            p.experts, capacity);
    MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    return absl::OkStatus();
  }
  auto* keys_in = reinterpret_cast<uint64_t*>(w + l.keys_in);
  auto* keys_out = reinterpret_cast<uint64_t*>(w + l.keys_out);
  auto* pair_in = reinterpret_cast<int32_t*>(w + l.values_in);
  auto* sorted_pairs = reinterpret_cast<int32_t*>(w + l.values_out);
  KeysKernel<<<Blocks(pairs), kThreads, 0, s>>>(p.indices, p.probs, keys_in, pair_in, p.kept, pairs,
                                                p.experts);
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  size_t sort_bytes = l.total - l.sort;
  MIMO_CUDA_RETURN_IF_ERROR(
      cub::DeviceRadixSort::SortPairs(w + l.sort, sort_bytes, keys_in, keys_out, pair_in,
                                      sorted_pairs, static_cast<int>(pairs), 0, kKeyBits, s));
  DropSortedKernel<<<static_cast<unsigned>(p.experts), kThreads, 0, s>>>(offsets, sorted_pairs,
                                                                         p.kept, capacity);
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace mimo::kernels
