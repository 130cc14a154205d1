// Patchify: cuts images into non-overlapping square patches, one row of features per patch (the
// input of a ViT's patch embedding, which is this then a linear layer), and its inverse (the
// gradient). Audio frame embedding needs no op: stacking k consecutive frames of a (frames,
// features) row-major array is a view of shape (frames / k, k * features).
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/allocator.h"
#include "kernels/dtype.h"

namespace mimo::kernels {

// patches[b][py * (width / patch) + px][(c * patch + dy) * patch + dx] =
//     images[b][c][py * patch + dy][px * patch + dx]
// The feature order (c, dy, dx) is a Conv2d weight's (out, c, kh, kw) flattened, so a Conv2d with
// kernel = stride = patch equals Patchify then a linear layer with that weight as (out, c*p*p).
// A pure permutation: results are exact, on both devices.
struct PatchifyParams {
  DType dtype = DType::kF32;  // bf16 or f32.
  const void* in = nullptr;   // images (forward) or patches (backward).
  void* out = nullptr;        // patches (forward) or images (backward); may not alias in.
  int64_t batch = 0;
  int64_t channels = 0;
  int64_t height = 0;  // A multiple of patch.
  int64_t width = 0;   // A multiple of patch.
  int64_t patch = 0;   // > 0
  // Images (batch, channels, height, width) -> patches (batch, (height/patch)*(width/patch),
  // channels*patch*patch); backward: the inverse (the gradient of the forward).
  bool backward = false;
};

// InvalidArgument for a dtype other than bf16/f32, negative sizes, a non-positive patch, an image
// side that is not a multiple of it, or a null buffer where elements are read or written.
absl::Status CheckPatchify(const PatchifyParams& p);

// CPU twin: host memory.
absl::Status PatchifyCpu(const PatchifyParams& p);

// CUDA: device memory, enqueued on `stream` (a cudaStream_t).
absl::Status LaunchPatchify(const PatchifyParams& p, StreamHandle stream);

}  // namespace mimo::kernels
