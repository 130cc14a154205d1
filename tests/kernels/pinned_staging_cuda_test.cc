// PinnedStaging: copies land intact although their source is overwritten right after each call,
// the host goes on while the stream is still blocked (the point of staging), the pool stays
// within its cap (waiting for a busy buffer, or copying directly when none fits). Skips without
// a GPU.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <thread>
#include <vector>

#include "kernels/device_info.h"
#include "kernels/pinned_staging.h"
#include "tests/kernels/cuda_test_util.h"

namespace mimo::kernels {
namespace {

using testing::DeviceBuffer;

class PinnedStagingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const CudaDevices devices = ListCudaDevices();
    if (devices.devices.empty()) GTEST_SKIP() << "no CUDA device: " << devices.unavailable_reason;
    ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
    ASSERT_EQ(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), cudaSuccess);
  }
  void TearDown() override {
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }
  // Holds the stream for `ms` milliseconds: a host function that sleeps; `released_` turns
  // true when it returns.
  void BlockStream(int ms) {
    released_ = false;
    block_ms_ = ms;
    ASSERT_EQ(cudaLaunchHostFunc(
                  stream_,
                  [](void* self) {
                    auto* t = static_cast<PinnedStagingTest*>(self);
                    std::this_thread::sleep_for(std::chrono::milliseconds(t->block_ms_));
                    t->released_ = true;
                  },
                  this),
              cudaSuccess);
  }
  static std::vector<char> Pattern(size_t bytes, int seed) {
    std::vector<char> v(bytes);
    for (size_t i = 0; i < bytes; ++i) v[i] = static_cast<char>((i * 131 + seed * 17) % 251);
    return v;
  }

  cudaStream_t stream_ = nullptr;
  std::atomic<bool> released_{false};
  int block_ms_ = 0;
};

TEST_F(PinnedStagingTest, CopiesSurviveTheSourceBeingReused) {
  PinnedStaging staging(0);
  const std::vector<size_t> sizes = {1, 1000, (64 << 10) - 1, 64 << 10, (1 << 20) + 3, 5 << 20};
  std::vector<std::unique_ptr<DeviceBuffer>> dst;
  for (size_t n : sizes) dst.push_back(std::make_unique<DeviceBuffer>(n));
  std::vector<char> source;
  BlockStream(300);
  for (size_t i = 0; i < sizes.size(); ++i) {
    source = Pattern(sizes[i], static_cast<int>(i));
    ASSERT_TRUE(staging.CopyToDevice(dst[i]->get(), source.data(), sizes[i], stream_).ok());
    std::fill(source.begin(), source.end(), 0x5a);  // The caller reuses its buffer at once.
  }
  // The staged copies returned while the stream was still held by the host function.
  EXPECT_FALSE(released_.load());
  ASSERT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);
  for (size_t i = 0; i < sizes.size(); ++i) {
    EXPECT_EQ(dst[i]->Bytes(), Pattern(sizes[i], static_cast<int>(i))) << "copy " << i;
  }
  // The three copies of 64 KiB and up, in whole MiB: 1 + 2 + 5.
  EXPECT_EQ(staging.held_bytes(), size_t{8} << 20);
}

TEST_F(PinnedStagingTest, BuffersAreReusedAndTheCapHolds) {
  PinnedStaging staging(0, {.min_bytes = 1024, .max_bytes = 2 << 20});
  const size_t bytes = (3 << 20) / 2;  // 1.5 MiB: one 2 MiB buffer fits under the cap.
  std::vector<std::unique_ptr<DeviceBuffer>> dst;
  for (int i = 0; i < 4; ++i) dst.push_back(std::make_unique<DeviceBuffer>(bytes));
  const std::vector<char> big = Pattern(3 << 20, 99);
  DeviceBuffer big_dst(big.size());
  BlockStream(100);
  for (int i = 0; i < 4; ++i) {
    const std::vector<char> source = Pattern(bytes, 10 + i);
    // From the second on, the only buffer is busy and there is no room: the copy waits for it.
    ASSERT_TRUE(staging.CopyToDevice(dst[i]->get(), source.data(), bytes, stream_).ok());
  }
  EXPECT_TRUE(released_.load());
  EXPECT_EQ(staging.held_bytes(), size_t{2} << 20);
  // Larger than the cap: copied directly.
  ASSERT_TRUE(staging.CopyToDevice(big_dst.get(), big.data(), big.size(), stream_).ok());
  ASSERT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(dst[i]->Bytes(), Pattern(bytes, 10 + i)) << "copy " << i;
  EXPECT_EQ(big_dst.Bytes(), big);
  EXPECT_EQ(staging.held_bytes(), size_t{2} << 20);
}

}  // namespace
}  // namespace mimo::kernels
