// FastestOf on a real device: alternatives of known durations (stream holds) against its choice.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "kernels/device_info.h"
#include "kernels/fastest_of.h"
#include "kernels/stream_hold.h"

namespace mimo::kernels {
namespace {

class FastestOfTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const CudaDevices devices = ListCudaDevices();
    if (devices.devices.empty()) GTEST_SKIP() << "no CUDA device: " << devices.unavailable_reason;
    ASSERT_EQ(cudaStreamCreate(&stream_), cudaSuccess);
    marks_.resize(9);
    for (cudaEvent_t& m : marks_) ASSERT_EQ(cudaEventCreate(&m), cudaSuccess);
  }
  void TearDown() override {
    for (cudaEvent_t m : marks_) cudaEventDestroy(m);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  // FastestOf over alternatives that hold the stream for `ns[i]` nanoseconds (negative: refused,
  // as a failing algorithm is); counts each alternative's runs.
  absl::StatusOr<int> Pick(const std::vector<int64_t>& ns) {
    runs_.assign(ns.size(), 0);
    const auto run = [&](int i) {
      ++runs_[i];
      return ns[i] >= 0 && LaunchStreamHold(ns[i], stream_).ok();
    };
    return FastestOf(static_cast<int>(ns.size()), run, stream_, marks_);
  }

  cudaStream_t stream_ = nullptr;
  std::vector<cudaEvent_t> marks_;
  std::vector<int> runs_;
};

TEST_F(FastestOfTest, PicksAnAlternativeClearlyFasterWhereverItStands) {
  // Rounds start at different alternatives: each time must still be credited to its own.
  for (int fast = 0; fast < 5; ++fast) {
    SCOPED_TRACE(fast);
    std::vector<int64_t> ns(5, 60'000);
    ns[fast] = 15'000;
    const absl::StatusOr<int> got = Pick(ns);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(*got, fast);
  }
  EXPECT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);
}

TEST_F(FastestOfTest, KeepsTheFirstUnlessAnotherIsMoreThanTheMarginFaster) {
  // 0.5% faster: within the 2% margin, so the first stands.
  absl::StatusOr<int> got = Pick({200'000, 199'000});
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, 0);
  got = Pick({200'000, 150'000});
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, 1);
}

TEST_F(FastestOfTest, ASingleAlternativeIsKeptWithoutRunning) {
  const absl::StatusOr<int> got = Pick({50'000});
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, 0);
  EXPECT_EQ(runs_[0], 0);
}

TEST_F(FastestOfTest, RefusedAlternativesAreNeverKept) {
  // The first refused: the fastest of the rest, measured against the first that ran.
  absl::StatusOr<int> got = Pick({-1, 60'000, 15'000});
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, 2);
  got = Pick({-1, 15'000, 15'000});
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, 1);
  // A refused alternative stops being run for the round it failed in.
  EXPECT_LE(runs_[0], 4);
  got = Pick({-1, -1, -1});
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, -1);
}

}  // namespace
}  // namespace mimo::kernels
