// The CUDA foundation on a real device: discovery, the error path, and a kernel against its twin.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "kernels/cuda_allocator.h"
#include "kernels/cuda_status.h"
#include "kernels/cuda_stream.h"
#include "kernels/device_info.h"
#include "kernels/fill.h"
#include "kernels/stream_hold.h"
#include "kernels/tensor.h"

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

TEST_F(CudaTest, StreamHoldDelaysTheWorkBehindIt) {
  cudaStream_t stream = nullptr;
  cudaEvent_t before = nullptr, after = nullptr;
  ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
  ASSERT_EQ(cudaEventCreate(&before), cudaSuccess);
  ASSERT_EQ(cudaEventCreate(&after), cudaSuccess);
  float* device = nullptr;
  ASSERT_EQ(cudaMalloc(reinterpret_cast<void**>(&device), sizeof(float)), cudaSuccess);
  ASSERT_EQ(cudaMemset(device, 0xff, sizeof(float)), cudaSuccess);
  for (const int64_t ns : {int64_t{0}, int64_t{3'000'000}}) {
    SCOPED_TRACE(ns);
    ASSERT_EQ(cudaEventRecord(before, stream), cudaSuccess);
    ASSERT_TRUE(LaunchStreamHold(ns, stream).ok());
    ASSERT_TRUE(LaunchFill({.out = device, .n = 1, .value = static_cast<float>(ns)}, stream).ok());
    ASSERT_EQ(cudaEventRecord(after, stream), cudaSuccess);
    ASSERT_EQ(cudaEventSynchronize(after), cudaSuccess);
    float ms = 0;
    ASSERT_EQ(cudaEventElapsedTime(&ms, before, after), cudaSuccess);
    // The event timer resolves about half a microsecond.
    EXPECT_GE(ms, static_cast<float>(ns) * 1e-6f - 1e-3f);
    // And ends: the hold spins for its duration, not much longer (loose: a shared GPU).
    EXPECT_LT(ms, static_cast<float>(ns) * 1e-6f + 50.0f);
    float got = 0;
    ASSERT_EQ(cudaMemcpy(&got, device, sizeof(float), cudaMemcpyDeviceToHost), cudaSuccess);
    EXPECT_EQ(got, static_cast<float>(ns));  // The work behind the hold ran.
  }
  EXPECT_EQ(LaunchStreamHold(-1, stream).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_EQ(cudaFree(device), cudaSuccess);
  ASSERT_EQ(cudaEventDestroy(before), cudaSuccess);
  ASSERT_EQ(cudaEventDestroy(after), cudaSuccess);
  ASSERT_EQ(cudaStreamDestroy(stream), cudaSuccess);
}

TEST_F(CudaTest, CachingAllocatorServesTensorsOnEveryDevice) {
  for (const CudaDevice& d : devices_.devices) {
    SCOPED_TRACE(d.name);
    absl::StatusOr<std::unique_ptr<CachingAllocator>> allocator = NewCudaAllocator(d.index);
    ASSERT_TRUE(allocator.ok()) << allocator.status();
    EXPECT_EQ((*allocator)->device(), Device::Cuda(d.index));
    ASSERT_EQ(cudaSetDevice(d.index), cudaSuccess);
    cudaStream_t stream = nullptr;
    ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
    for (int step = 0; step < 3; ++step) {
      absl::StatusOr<Tensor> t = Tensor::Empty({1000, 3}, DType::kF32, **allocator, stream);
      ASSERT_TRUE(t.ok()) << t.status();
      EXPECT_EQ(t->device(), Device::Cuda(d.index));
      EXPECT_EQ(reinterpret_cast<uintptr_t>(t->data()) % 256, 0u);
      ASSERT_TRUE(
          LaunchFill({.out = t->data<float>(), .n = 3000, .value = 2.5f + step}, stream).ok());
      std::vector<float> got(3000);
      ASSERT_EQ(cudaMemcpyAsync(got.data(), t->data(), 3000 * sizeof(float), cudaMemcpyDeviceToHost,
                                stream),
                cudaSuccess);
      ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
      EXPECT_EQ(got[2999], 2.5f + step);
    }
    // Three steps, one segment: the later tensors reused the first one's block.
    const AllocatorStats stats = (*allocator)->stats();
    EXPECT_EQ(stats.system_allocations, 1);
    EXPECT_EQ(stats.allocations, 3);
    EXPECT_EQ(stats.allocated_bytes, 0);
    EXPECT_EQ(stats.reserved_bytes, int64_t{2} << 20);
    ASSERT_EQ(cudaStreamDestroy(stream), cudaSuccess);
  }
}

TEST_F(CudaTest, StreamsAndEventsOrderAndTimeWork) {
  absl::StatusOr<CudaStream> first = CudaStream::Create(0);
  absl::StatusOr<CudaStream> second = CudaStream::Create(0);
  absl::StatusOr<CudaEvent> start = CudaEvent::Create(0);
  absl::StatusOr<CudaEvent> filled = CudaEvent::Create(0);
  ASSERT_TRUE(first.ok() && second.ok() && start.ok() && filled.ok()) << first.status();
  constexpr int64_t n = int64_t{1} << 24;
  float* device = nullptr;
  ASSERT_EQ(cudaMalloc(reinterpret_cast<void**>(&device), n * sizeof(float)), cudaSuccess);
  ASSERT_TRUE(start->Record(*first).ok());
  ASSERT_TRUE(LaunchFill({.out = device, .n = n, .value = 7.0f}, first->get()).ok());
  ASSERT_TRUE(filled->Record(*first).ok());
  // The second stream reads the buffer only after the fill on the first.
  ASSERT_TRUE(filled->WaitOn(*second).ok());
  float last = 0;
  ASSERT_EQ(
      cudaMemcpyAsync(&last, device + n - 1, sizeof(float), cudaMemcpyDeviceToHost, second->get()),
      cudaSuccess);
  ASSERT_TRUE(second->Synchronize().ok());
  EXPECT_EQ(last, 7.0f);
  absl::StatusOr<float> ms = filled->MillisecondsSince(*start);
  ASSERT_TRUE(ms.ok()) << ms.status();
  EXPECT_GT(*ms, 0.0f);
  // Moved-from objects own nothing; the moved-to ones still work.
  CudaStream moved = *std::move(first);
  EXPECT_EQ(first->get(), nullptr);
  EXPECT_TRUE(moved.Synchronize().ok());
  ASSERT_EQ(cudaFree(device), cudaSuccess);
  EXPECT_TRUE(absl::IsInvalidArgument(CudaStream::Create(4096).status()));
  EXPECT_THAT(CudaEvent::Create(-1).status().message(),
              HasSubstr("CudaEvent::Create: CUDA device -1 does not exist"));
}

TEST_F(CudaTest, CachingAllocatorRunsOutWithAClearError) {
  absl::StatusOr<std::unique_ptr<CachingAllocator>> allocator = NewCudaAllocator(0);
  ASSERT_TRUE(allocator.ok()) << allocator.status();
  const absl::StatusOr<void*> huge = (*allocator)->Allocate(size_t{1} << 50);
  EXPECT_TRUE(absl::IsResourceExhausted(huge.status())) << huge.status();
  EXPECT_THAT(huge.status().message(), HasSubstr("out of memory on cuda:0"));
  EXPECT_THAT(huge.status().message(), HasSubstr("cudaErrorMemoryAllocation"));
  // The device stays usable.
  EXPECT_TRUE((*allocator)->Allocate(1024).ok());
  EXPECT_TRUE(absl::IsInvalidArgument(NewCudaAllocator(4096).status()));
}

}  // namespace
}  // namespace mimo::kernels
