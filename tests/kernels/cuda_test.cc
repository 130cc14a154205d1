// The CUDA foundation on a real device: discovery, the error path, and a kernel against its twin.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/cuda_status.h"
#include "kernels/device_info.h"
#include "kernels/fill.h"

namespace mimo::kernels {
namespace {

using ::testing::HasSubstr;

class CudaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    devices_ = ListCudaDevices();
    if (devices_.devices.empty()) {
      GTEST_SKIP() << "no CUDA device: " << devices_.unavailable_reason;
    }
  }
  CudaDevices devices_;
};

TEST_F(CudaTest, DevicesAreHopperClassAsBuilt) {
  for (const CudaDevice& d : devices_.devices) {
    SCOPED_TRACE(d.name);
    // The build targets sm_90a: only compute capability 9.0 devices can run it.
    EXPECT_EQ(d.major, 9);
    EXPECT_EQ(d.minor, 0);
    EXPECT_GT(d.multiprocessors, 0);
    EXPECT_GT(d.total_bytes, int64_t{16} << 30);
    EXPECT_GT(d.free_bytes, 0);
    EXPECT_LE(d.free_bytes, d.total_bytes);
  }
}

TEST_F(CudaTest, ErrorsNameTheCallAndTheError) {
  void* p = nullptr;
  // More memory than any device has.
  const absl::Status status =
      CudaStatus(cudaMalloc(&p, size_t{1} << 50), "cudaMalloc(&p, 1 PiB)", "cuda_test.cc", 7);
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(status.message(), HasSubstr("cuda_test.cc:7: cudaMalloc(&p, 1 PiB) failed: "
                                          "cudaErrorMemoryAllocation"));
  cudaGetLastError();  // Clear the (non-sticky) error so later tests start clean.
}

TEST_F(CudaTest, FillMatchesItsCpuTwinOnOddSizes) {
  std::mt19937 rng(std::random_device{}());
  std::uniform_real_distribution<float> value(-1e3f, 1e3f);
  for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{255}, int64_t{257}, int64_t{1} << 20,
                    (int64_t{65536} * 256) + 13}) {
    SCOPED_TRACE(n);
    const float v = value(rng);
    float* device = nullptr;
    ASSERT_EQ(cudaMalloc(reinterpret_cast<void**>(&device), n * sizeof(float)), cudaSuccess);
    // Poison the buffer (NaN bytes) so unwritten elements show.
    ASSERT_EQ(cudaMemset(device, 0xff, n * sizeof(float)), cudaSuccess);
    ASSERT_TRUE(LaunchFill({.out = device, .n = n, .value = v}, nullptr).ok());
    std::vector<float> got(n), want(n);
    ASSERT_EQ(cudaMemcpy(got.data(), device, n * sizeof(float), cudaMemcpyDeviceToHost),
              cudaSuccess);
    FillCpu({.out = want.data(), .n = n, .value = v});
    EXPECT_EQ(std::memcmp(got.data(), want.data(), n * sizeof(float)), 0);
    EXPECT_FALSE(std::isnan(got[n - 1]));
    ASSERT_EQ(cudaFree(device), cudaSuccess);
  }
}

TEST_F(CudaTest, FillRejectsBadArguments) {
  EXPECT_EQ(LaunchFill({.out = nullptr, .n = 4}, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(LaunchFill({.out = nullptr, .n = -1}, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(LaunchFill({.out = nullptr, .n = 0}, nullptr).ok());
}

}  // namespace
}  // namespace mimo::kernels
