// The grouped GEMM's Hopper kernels for kVariableDepth (grouped_gemm_hopper.cu), as
// grouped_gemm.cu chooses and launches them: what each needs and how each is enqueued.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

#include "absl/status/status.h"
#include "kernels/grouped_gemm_device.cuh"

namespace mimo::kernels::grouped_gemm_internal {

// Both kernels' output tiles: the grid is (column tiles, row tiles, groups) of these.
inline constexpr int kWgmmaBm = 128, kWgmmaBn = 256;

// Dynamic shared memory per block of the cp.async kernel (kWgmma) and of the TMA one (kWgmmaTma).
size_t WgmmaSmemBytes();
size_t WgmmaTmaSmemBytes();

// Whether the driver encodes TMA maps (cuTensorMapEncodeTiled), which the TMA kernel needs.
bool TensorMapsEncodable();

// Enqueue the product `args` describes on `grid`: d in f32 where `f32_out`, else bf16. The TMA
// kernel runs at most `multiprocessors` persistent blocks over the grid's tiles.
absl::Status LaunchWgmma(const Args& args, bool f32_out, dim3 grid, cudaStream_t s);
absl::Status LaunchWgmmaTma(const Args& args, bool f32_out, dim3 grid, int multiprocessors,
                            cudaStream_t s);

}  // namespace mimo::kernels::grouped_gemm_internal
