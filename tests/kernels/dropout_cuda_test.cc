// Dropout's CUDA kernel against the CPU twin, bitwise, at odd offsets and sizes (so calls start
// and end inside Philox blocks), and argument errors. Skips without a GPU.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "kernels/dropout.h"
#include "tests/kernels/cuda_test_util.h"
#include "tests/kernels/op_test_util.h"

namespace mimo::kernels {
namespace {

using ::testing::HasSubstr;
using namespace ::mimo::kernels::testing;  // NOLINT: test helpers.

class DropoutCudaTest : public CudaOpTest {};

TEST_P(DropoutCudaTest, MatchesTheCpuTwinBitwise) {
  const DType dtype = GetParam();
  std::mt19937 random(std::random_device{}());
  for (const auto& [n, offset] : {std::pair<int64_t, uint64_t>{1, 0},
                                  {1, 3},
                                  {7, 1},
                                  {1001, 6},
                                  {(int64_t{1} << 24) + 3, uint64_t{1} << 40},
                                  // More Philox blocks than the grid's 65536 x 256 threads: the
                                  // grid-stride loop's later passes.
                                  {(int64_t{1} << 26) + (int64_t{1} << 20) + 5, 2}}) {
    SCOPED_TRACE(::testing::Message() << DTypeName(dtype) << " n " << n << " offset " << offset);
    const HostData x = RandomData(dtype, n, random, -2, 2);
    const DeviceBuffer d_x(x.bytes), d_y(n * DTypeSize(dtype));
    DropoutParams p{.dtype = dtype,
                    .x = d_x.get(),
                    .y = d_y.get(),
                    .n = n,
                    .p = 0.1f,
                    .seed = 0x123456789abcULL,
                    .substream = 3,
                    .kind = 2,
                    .offset = offset};
    ASSERT_TRUE(LaunchDropout(p, nullptr).ok());
    HostData want = PoisonedData(dtype, n);
    p.x = x.data();
    p.y = want.data();
    ASSERT_TRUE(DropoutCpu(p).ok());
    EXPECT_EQ(d_y.Bytes(), want.bytes);
  }
}

INSTANTIATE_TEST_SUITE_P(DTypes, DropoutCudaTest, ::testing::Values(DType::kF32, DType::kBF16),
                         [](const auto& info) { return std::string(DTypeName(info.param)); });

TEST_F(DropoutCudaTest, BadArgumentsFailBeforeLaunching) {
  EXPECT_THAT(LaunchDropout({.n = 4, .p = 2.0f}, nullptr).message(), HasSubstr("p must be in"));
  EXPECT_TRUE(LaunchDropout({.n = 0}, nullptr).ok());
}

}  // namespace
}  // namespace mimo::kernels
