// Cast's CUDA kernel against its CPU twin: bitwise equal on random values with every special
// class mixed in (NaNs stay NaN), both directions, odd sizes. Skips without a GPU.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "common/bfloat16.h"
#include "kernels/cast.h"
#include "tests/kernels/cuda_test_util.h"
#include "tests/kernels/op_test_util.h"

namespace mimo::kernels {
namespace {

using namespace ::mimo::kernels::testing;  // NOLINT: test helpers.

class CastCudaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const CudaDevices devices = ListCudaDevices();
    if (devices.devices.empty()) GTEST_SKIP() << "no CUDA device: " << devices.unavailable_reason;
  }
};

TEST_F(CastCudaTest, BitwiseEqualToTheCpuTwin) {
  for (const int64_t n : {int64_t{1}, int64_t{1000003}}) {
    std::mt19937 random(static_cast<unsigned>(n));
    std::vector<float> x(n);
    std::uniform_int_distribution<uint32_t> bits;
    for (float& v : x) {
      const uint32_t u = bits(random);
      std::memcpy(&v, &u, 4);  // Every bit pattern: normals, subnormals, infinities, NaNs.
    }
    std::vector<uint16_t> want(n);
    ASSERT_TRUE(
        CastCpu({.from = DType::kF32, .to = DType::kBF16, .x = x.data(), .y = want.data(), .n = n})
            .ok());
    DeviceBuffer dx(BytesOf(x.data(), n * 4)), dy(n * 2), dback(n * 4);
    ASSERT_TRUE(
        LaunchCast({.from = DType::kF32, .to = DType::kBF16, .x = dx.get(), .y = dy.get(), .n = n},
                   nullptr)
            .ok());
    std::vector<uint16_t> got(n);
    const std::vector<char> bytes = dy.Bytes();
    std::memcpy(got.data(), bytes.data(), n * 2);
    int64_t mismatches = 0;
    for (int64_t i = 0; i < n; ++i) {
      if (std::isnan(x[i])) {
        EXPECT_TRUE(std::isnan(BFloat16ToFloat(got[i]))) << i;
      } else if (got[i] != want[i] && ++mismatches <= 5) {
        ADD_FAILURE() << "element " << i << ": got " << got[i] << ", want " << want[i];
      }
    }
    EXPECT_EQ(mismatches, 0);
    // And back: bf16 -> f32 is exact.
    ASSERT_TRUE(
        LaunchCast(
            {.from = DType::kBF16, .to = DType::kF32, .x = dy.get(), .y = dback.get(), .n = n},
            nullptr)
            .ok());
    std::vector<float> back(n), back_want(n);
    const std::vector<char> back_bytes = dback.Bytes();
    std::memcpy(back.data(), back_bytes.data(), n * 4);
    ASSERT_TRUE(CastCpu({.from = DType::kBF16,
                         .to = DType::kF32,
                         .x = got.data(),
                         .y = back_want.data(),
                         .n = n})
                    .ok());
    EXPECT_EQ(std::memcmp(back.data(), back_want.data(), n * 4), 0);
  }
}

}  // namespace
}  // namespace mimo::kernels
