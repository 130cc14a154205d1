// Warp- and block-wide sums and maxima for kernels that reduce a row per warp or per block.
#pragma once

namespace mimo::kernels {

// The sum of `v` over a whole warp (an xor butterfly), returned to every lane.
__device__ __forceinline__ float WarpSum(float v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// The maximum of `v` over a whole warp, returned to every lane.
__device__ __forceinline__ float WarpMax(float v) {
  for (int offset = 16; offset > 0; offset /= 2) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  }
  return v;
}

// The sum of `v` over a block of at most 1024 threads (a multiple of 32), returned to every
// thread. `scratch` holds blockDim.x / 32 floats of shared memory; calls may follow each other.
__device__ __forceinline__ float BlockSum(float v, float* scratch) {
  v = WarpSum(v);
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  __syncthreads();  // scratch may still be read by an earlier call.
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  return WarpSum(lane < static_cast<int>(blockDim.x / 32) ? scratch[lane] : 0.0f);
}

// The maximum of `v` over the block, returned to every thread; as BlockSum.
__device__ __forceinline__ float BlockMax(float v, float* scratch) {
  v = WarpMax(v);
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  return WarpMax(lane < static_cast<int>(blockDim.x / 32) ? scratch[lane] : -INFINITY);
}

}  // namespace mimo::kernels
