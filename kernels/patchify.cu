// Patchify on the GPU: one thread per image element over a grid-stride loop, reading the images
// (forward) or writing them (backward) in order.
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "common/status_macros.h"
#include "kernels/cuda_launch.h"
#include "kernels/cuda_status.h"
#include "kernels/patchify.h"

namespace mimo::kernels {
namespace {

// T is a same-sized integer: the op moves bits.
template <typename T>
__global__ void PatchifyKernel(const T* __restrict__ in, T* __restrict__ out, int64_t n,
                               int64_t channels, int64_t height, int64_t width, int64_t patch,
                               bool backward) {
  const int64_t pw = width / patch, per_image = (height / patch) * pw;
  const int64_t features = channels * patch * patch;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t image = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; image < n;
       image += stride) {
    const int64_t x = image % width;
    const int64_t y = (image / width) % height;
    const int64_t c = (image / (width * height)) % channels;
    const int64_t b = image / (width * height * channels);
    const int64_t patch_index = b * per_image + (y / patch) * pw + x / patch;
    const int64_t feature = (c * patch + y % patch) * patch + x % patch;
    const int64_t patches = patch_index * features + feature;
    if (backward) {
      out[image] = in[patches];
    } else {
      out[patches] = in[image];
    }
  }
}

}  // namespace

absl::Status LaunchPatchify(const PatchifyParams& p, StreamHandle stream) {
  MIMO_RETURN_IF_ERROR(CheckPatchify(p));
  const int64_t n = p.batch * p.channels * p.height * p.width;
  if (n == 0) return absl::OkStatus();
  const auto s = static_cast<cudaStream_t>(stream);
  if (p.dtype == DType::kF32) {
    PatchifyKernel<<<GridStrideBlocks(n), kThreadsPerBlock, 0, s>>>(
        static_cast<const uint32_t*>(p.in), static_cast<uint32_t*>(p.out), n, p.channels, p.height,
        p.width, p.patch, p.backward);
  } else {
    PatchifyKernel<<<GridStrideBlocks(n), kThreadsPerBlock, 0, s>>>(
        static_cast<const uint16_t*>(p.in), static_cast<uint16_t*>(p.out), n, p.channels, p.height,
        p.width, p.patch, p.backward);
  }
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace mimo::kernels
