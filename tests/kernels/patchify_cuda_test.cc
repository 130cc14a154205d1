// Patchify's CUDA kernel bitwise equal to the CPU twin, both directions, on fresh random inputs
// and odd shapes (up to 64 ImageNet-sized images), poisoned outputs fully written, and argument
// errors. Skips without a GPU.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "kernels/patchify.h"
#include "tests/kernels/cuda_test_util.h"
#include "tests/kernels/op_test_util.h"

namespace mimo::kernels {
namespace {

using ::testing::HasSubstr;
using namespace ::mimo::kernels::testing;  // NOLINT: test helpers.

class PatchifyCudaTest : public CudaOpTest {};

TEST_P(PatchifyCudaTest, EqualsTheCpuTwinBitwise) {
  const DType dtype = GetParam();
  std::mt19937 random(std::random_device{}());
  struct Shape {
    int64_t batch, channels, height, width, patch;
  };
  for (const Shape& s : {Shape{1, 1, 1, 1, 1}, Shape{2, 3, 8, 12, 4}, Shape{3, 1, 14, 7, 7},
                         Shape{64, 3, 224, 224, 16}}) {
    SCOPED_TRACE(::testing::Message() << DTypeName(dtype) << " " << s.batch << "x" << s.channels
                                      << "x" << s.height << "x" << s.width << " patch " << s.patch);
    const int64_t n = s.batch * s.channels * s.height * s.width;
    for (bool backward : {false, true}) {
      const HostData in = RandomData(dtype, n, random, -1, 1);
      HostData want = PoisonedData(dtype, n);
      PatchifyParams p{.dtype = dtype,
                       .in = in.data(),
                       .out = want.data(),
                       .batch = s.batch,
                       .channels = s.channels,
                       .height = s.height,
                       .width = s.width,
                       .patch = s.patch,
                       .backward = backward};
      ASSERT_TRUE(PatchifyCpu(p).ok());
      const DeviceBuffer d_in(in.bytes), d_out(n * DTypeSize(dtype));
      p.in = d_in.get();
      p.out = d_out.get();
      ASSERT_TRUE(LaunchPatchify(p, nullptr).ok());
      EXPECT_EQ(d_out.Bytes(), want.bytes) << (backward ? "backward" : "forward");
    }
  }
}

INSTANTIATE_TEST_SUITE_P(DTypes, PatchifyCudaTest, ::testing::Values(DType::kF32, DType::kBF16),
                         [](const auto& info) { return std::string(DTypeName(info.param)); });

TEST_F(PatchifyCudaTest, BadArgumentsFailBeforeLaunching) {
  EXPECT_THAT(
      LaunchPatchify({.batch = 1, .channels = 1, .height = 3, .width = 4, .patch = 2}, nullptr)
          .message(),
      HasSubstr("bad shape"));
  EXPECT_TRUE(LaunchPatchify({.patch = 2}, nullptr).ok());
}

}  // namespace
}  // namespace mimo::kernels
