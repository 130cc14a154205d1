// The grouped GEMM's Hopper kernel for kVariableDepth (grouped_gemm_hopper.cu), as
// grouped_gemm.cu chooses and launches it: what it needs and how it is enqueued.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

#include "absl/status/status.h"
#include "kernels/grouped_gemm_device.cuh"

namespace mimo::kernels::grouped_gemm_internal {

// Its output tiles: the grid is (column tiles, row tiles, groups) of these.
inline constexpr int kWgmmaBm = 128, kWgmmaBn = 256;

// Dynamic shared memory per block.
size_t WgmmaSmemBytes();

// Whether the driver encodes TMA maps (cuTensorMapEncodeTiled), which the kernel needs.
bool TensorMapsEncodable();

// Enqueues the product `args` describes over the tiles of `grid` (d in f32 where `f32_out`,
// else bf16) on at most `multiprocessors` persistent blocks.
absl::Status LaunchWgmma(const Args& args, bool f32_out, dim3 grid, int multiprocessors,
                         cudaStream_t s);

}  // namespace mimo::kernels::grouped_gemm_internal
