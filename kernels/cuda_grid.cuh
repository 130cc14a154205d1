// Element packs, resident grid sizes and cluster launches for the streaming kernels.
//
// The elementwise and row-streaming kernels (SwiGLU, RoPE, cross-entropy) touch each byte once,
// so their speed is the memory system's: they move whole 16-byte packs (8 bf16 or 4 f32 per load,
// LDG.128/STG.128) and keep several packs in flight per thread, some over a grid-stride loop on a
// grid sized to what the device keeps resident. Pack<T, 1> is the scalar fallback of the same
// code, for shapes and pointers that do not allow 16-byte accesses.
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>

namespace mimo::kernels {

// N consecutive elements of T, loaded and stored as one access.
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

// Multiprocessors of the current device (at least 1).
inline int MultiprocessorCount() {
  int device = 0, sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
    (void)cudaGetLastError();  // Not sticky; a grid of one wave per multiprocessor still works.
    sms = 1;
  }
  return std::max(sms, 1);
}

// Blocks of `threads` threads (and `smem` bytes of dynamic shared memory, the same on every call)
// of `kKernel` that the current device keeps resident at once: multiprocessors x blocks per
// multiprocessor. A grid-stride loop over that many blocks has all of the device's memory
// parallelism and no tail of late blocks. The occupancy is computed once per kernel (it depends on
// the kernel and the architecture); the multiprocessor count is read per call (cached by CUDA).
template <auto kKernel>
unsigned ResidentBlocks(int threads, size_t smem = 0) {
  static const int per_sm = [&] {
    int blocks = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kKernel, threads, smem) !=
        cudaSuccess) {
      (void)cudaGetLastError();
      blocks = 1;
    }
    return std::max(blocks, 1);
  }();
  return static_cast<unsigned>(MultiprocessorCount() * per_sm);
}

// The architecture `kKernel`'s code for the current device was compiled for, as 10 x major +
// minor: the lower of its PTX's and its binary's (a binary JIT-compiled for a Hopper from older
// PTX has only that PTX's `__CUDA_ARCH__` code paths); 0 when it cannot be queried. Computed once
// per kernel.
template <auto kKernel>
int KernelArch() {
  static const int arch = [] {
    cudaFuncAttributes a{};
    if (cudaFuncGetAttributes(&a, kKernel) != cudaSuccess) {
      (void)cudaGetLastError();
      return 0;
    }
    return std::min(a.ptxVersion, a.binaryVersion);
  }();
  return arch;
}

// Whether `kKernel` can run its thread block cluster paths (sm_90 code on an sm_90 device).
template <auto kKernel>
bool ClustersBuilt() {
  return KernelArch<kKernel>() >= 90;
}

// A launch of `grid` blocks of `block` threads on `stream` (cudaLaunchKernelEx), in clusters of
// `cluster_x` consecutive blocks when that is more than 1 (the kernel must have ClustersBuilt and
// the grid a multiple of it). Not copyable: `config` points at `cluster`.
struct ClusterLaunch {
  ClusterLaunch(dim3 grid, dim3 block, size_t smem, cudaStream_t stream, unsigned cluster_x) {
    config.gridDim = grid;
    config.blockDim = block;
    config.dynamicSmemBytes = smem;
    config.stream = stream;
    cluster.id = cudaLaunchAttributeClusterDimension;
    cluster.val.clusterDim.x = cluster_x;
    cluster.val.clusterDim.y = 1;
    cluster.val.clusterDim.z = 1;
    config.attrs = &cluster;
    config.numAttrs = cluster_x > 1 ? 1 : 0;
  }
  ClusterLaunch(const ClusterLaunch&) = delete;
  ClusterLaunch& operator=(const ClusterLaunch&) = delete;

  cudaLaunchConfig_t config{};
  cudaLaunchAttribute cluster{};
};

// Grid for a grid-stride loop over `items` items, `per_block` per block and pass: enough blocks to
// cover them, at most `resident`, at least 1.
inline unsigned GridFor(int64_t items, int64_t per_block, unsigned resident) {
  return static_cast<unsigned>(
      std::max<int64_t>(1, std::min<int64_t>((items + per_block - 1) / per_block, resident)));
}

}  // namespace mimo::kernels
