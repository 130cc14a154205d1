// Elementwise sum on the GPU: 16-byte vectors over a grid-stride loop when every pointer allows
// them, single elements otherwise (and for the tail).
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include "common/status_macros.h"
#include "kernels/add.h"
#include "kernels/cuda_elements.cuh"
#include "kernels/cuda_launch.h"
#include "kernels/cuda_status.h"
#include "kernels/cuda_vector.cuh"

namespace mimo::kernels {
namespace {

// No __restrict__: out may alias a or b (each element is read before it is written, by the same
// thread).
template <typename T>
__global__ void AddVecKernel(const T* a, const T* b, T* out, int64_t vecs) {
  constexpr int V = kVecWidth<T>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < vecs;
       i += stride) {
    float x[V], y[V];
    LoadVec(a + i * V, x);
    LoadVec(b + i * V, y);
#pragma unroll
    for (int j = 0; j < V; ++j) x[j] += y[j];
    StoreVec(out + i * V, x);
  }
}

template <typename T>
__global__ void AddKernel(const T* a, const T* b, T* out, int64_t begin, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = begin + static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    Put(&out[i], ToFloat(a[i]) + ToFloat(b[i]));
  }
}

__global__ void AddCountsKernel(const uint32_t* a, const uint32_t* b, uint32_t* out, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    out[i] = a[i] + b[i];
  }
}

template <typename T>
void Enqueue(const AddParams& p, cudaStream_t s) {
  const auto* a = static_cast<const T*>(p.a);
  const auto* b = static_cast<const T*>(p.b);
  auto* out = static_cast<T*>(p.out);
  int64_t begin = 0;
  if (VecAligned(a) && VecAligned(b) && VecAligned(out)) {
    const int64_t vecs = p.n / kVecWidth<T>;
    if (vecs > 0) {
      AddVecKernel<T><<<GridStrideBlocks(vecs), kThreadsPerBlock, 0, s>>>(a, b, out, vecs);
    }
    begin = vecs * kVecWidth<T>;
  }
  if (begin < p.n) {
    AddKernel<T><<<GridStrideBlocks(p.n - begin), kThreadsPerBlock, 0, s>>>(a, b, out, begin, p.n);
  }
}

}  // namespace

absl::Status LaunchAdd(const AddParams& p, StreamHandle stream) {
  MIMO_RETURN_IF_ERROR(CheckAdd(p));
  if (p.n == 0) return absl::OkStatus();
  const auto s = static_cast<cudaStream_t>(stream);
  if (p.dtype == DType::kI32) {
    AddCountsKernel<<<GridStrideBlocks(p.n), kThreadsPerBlock, 0, s>>>(
        static_cast<const uint32_t*>(p.a), static_cast<const uint32_t*>(p.b),
        static_cast<uint32_t*>(p.out), p.n);
  } else if (p.dtype == DType::kF32) {
    Enqueue<float>(p, s);
  } else {
    Enqueue<__nv_bfloat16>(p, s);
  }
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace mimo::kernels
