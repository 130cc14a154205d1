// KernelArch against the code a kernel actually runs: the `__CUDA_ARCH__` it was compiled with.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include "kernels/cuda_grid.cuh"
#include "kernels/device_info.h"

namespace mimo::kernels {
namespace {

// Writes the architecture its code was compiled for (e.g. 900).
__global__ void CompiledArchKernel(int* out) {
#if defined(__CUDA_ARCH__)
  *out = __CUDA_ARCH__;
#endif
}

TEST(CudaGridTest, KernelArchIsTheArchitectureTheKernelWasCompiledFor) {
  const CudaDevices devices = ListCudaDevices();
  if (devices.devices.empty()) GTEST_SKIP() << "no CUDA device: " << devices.unavailable_reason;
  int* out = nullptr;
  ASSERT_EQ(cudaMalloc(&out, sizeof(int)), cudaSuccess);
  ASSERT_EQ(cudaMemset(out, 0, sizeof(int)), cudaSuccess);
  CompiledArchKernel<<<1, 1>>>(out);
  int compiled = 0;
  ASSERT_EQ(cudaMemcpy(&compiled, out, sizeof(int), cudaMemcpyDeviceToHost), cudaSuccess);
  ASSERT_EQ(cudaFree(out), cudaSuccess);
  // So the kernels' `__CUDA_ARCH__ >= 900` cluster code and their host-side ClustersBuilt agree
  // (and RMSNorm's cp.async path and its KernelArch >= 80 check).
  EXPECT_EQ(KernelArch<CompiledArchKernel>() * 10, compiled);
  EXPECT_EQ(ClustersBuilt<CompiledArchKernel>(), compiled >= 900);
}

}  // namespace
}  // namespace mimo::kernels
