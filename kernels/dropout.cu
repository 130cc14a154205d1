// Dropout: the CUDA kernel. Each thread takes one Philox block, i.e. up to 4 consecutive elements
// of the stream, over a grid-stride loop.
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <algorithm>

#include "common/philox.h"
#include "kernels/cuda_elements.cuh"
#include "kernels/cuda_status.h"
#include "kernels/dropout.h"

namespace mimo::kernels {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void DropoutKernel(const T* x, T* y, int64_t n, float p, float scale, uint32_t key0,
                              uint32_t key1, uint32_t substream, uint32_t kind, uint64_t offset) {
  // Blocks of the stream that hold elements [offset, offset + n).
  const uint64_t first = offset / 4, last = (offset + static_cast<uint64_t>(n) - 1) / 4;
  const uint64_t stride = static_cast<uint64_t>(gridDim.x) * blockDim.x;
  for (uint64_t b = first + static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x; b <= last;
       b += stride) {
    const PhiloxCounter bits = Philox4x32(
        {static_cast<uint32_t>(b), static_cast<uint32_t>(b >> 32), substream, kind}, {key0, key1});
    for (int w = 0; w < 4; ++w) {
      const uint64_t e = b * 4 + w;
      if (e < offset || e >= offset + static_cast<uint64_t>(n)) continue;
      const int64_t i = static_cast<int64_t>(e - offset);
      const float u = static_cast<float>(bits[w] >> 8) * 0x1p-24f;
      Put(&y[i], u >= p ? ToFloat(x[i]) * scale : 0.0f);
    }
  }
}

}  // namespace

absl::Status LaunchDropout(const DropoutParams& p, StreamHandle stream) {
  MIMO_RETURN_IF_ERROR(CheckDropout(p));
  if (p.n == 0) return absl::OkStatus();
  const uint64_t blocks_of_stream = (p.offset + p.n - 1) / 4 - p.offset / 4 + 1;
  const auto grid = static_cast<unsigned>(
      std::min<uint64_t>((blocks_of_stream + kThreads - 1) / kThreads, 65536));
  const auto s = static_cast<cudaStream_t>(stream);
  const float scale = 1.0f / (1.0f - p.p);
  const auto key0 = static_cast<uint32_t>(p.seed), key1 = static_cast<uint32_t>(p.seed >> 32);
  if (p.dtype == DType::kF32) {
    DropoutKernel<float><<<grid, kThreads, 0, s>>>(static_cast<const float*>(p.x),
                                                   static_cast<float*>(p.y), p.n, p.p, scale, key0,
                                                   key1, p.substream, p.kind, p.offset);
  } else {
    DropoutKernel<__nv_bfloat16><<<grid, kThreads, 0, s>>>(
        static_cast<const __nv_bfloat16*>(p.x), static_cast<__nv_bfloat16*>(p.y), p.n, p.p, scale,
        key0, key1, p.substream, p.kind, p.offset);
  }
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace mimo::kernels
