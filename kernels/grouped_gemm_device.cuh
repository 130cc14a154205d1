// What the grouped GEMM's kernels share (grouped_gemm.cu and grouped_gemm_hopper.cu): the
// arguments every kernel reads, a group's clamped rows, a block's work for a weight-gradient tile,
// and the paired stores that write or add.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace mimo::kernels::grouped_gemm_internal {

using bf16 = __nv_bfloat16;

// What every grouped kernel reads. Sizes fit in int32 (CheckGroupedGemm).
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

// The pair at d as floats (the old values of an output that is added to).
template <typename OutT>
__device__ __forceinline__ float2 LoadPair(const OutT* d);

template <>
__device__ __forceinline__ float2 LoadPair<float>(const float* d) {
  return *reinterpret_cast<const float2*>(d);
}

template <>
__device__ __forceinline__ float2 LoadPair<bf16>(const bf16* d) {
  return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(d));
}

}  // namespace mimo::kernels::grouped_gemm_internal
