// Patchify's CPU twin: every element where the formula puts it (exact), the backward as the
// forward's transpose (<P x, y> = <x, P^T y>) and against central differences, Patchify then a
// linear layer equal to a Conv2d with kernel = stride = patch (float64), and argument errors.
#include "kernels/patchify.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "tests/kernels/op_test_util.h"

namespace mimo::kernels {
namespace {

using ::testing::HasSubstr;
using namespace ::mimo::kernels::testing;  // NOLINT: test helpers.

struct Shape {
  int64_t batch, channels, height, width, patch;
  int64_t n() const { return batch * channels * height * width; }
};
constexpr Shape kShapes[] = {
    {1, 1, 1, 1, 1}, {2, 3, 8, 12, 4}, {3, 1, 14, 7, 7}, {1, 3, 32, 32, 8}};

class PatchifyCpuTest : public ::testing::TestWithParam<DType> {};

TEST_P(PatchifyCpuTest, PutsEveryElementWhereTheFormulaSaysAndBackwardIsTheTranspose) {
  const DType dtype = GetParam();
  std::mt19937 random(std::random_device{}());
  for (const Shape& s : kShapes) {
    SCOPED_TRACE(::testing::Message() << DTypeName(dtype) << " " << s.batch << "x" << s.channels
                                      << "x" << s.height << "x" << s.width << " patch " << s.patch);
    const HostData images = RandomData(dtype, s.n(), random, -1, 1);
    const HostData y = RandomData(dtype, s.n(), random, -1, 1);
    HostData patches = PoisonedData(dtype, s.n()), back = PoisonedData(dtype, s.n());
    PatchifyParams p{.dtype = dtype,
                     .in = images.data(),
                     .out = patches.data(),
                     .batch = s.batch,
                     .channels = s.channels,
                     .height = s.height,
                     .width = s.width,
                     .patch = s.patch};
    ASSERT_TRUE(PatchifyCpu(p).ok());
    const std::vector<double> got = ValuesOf(dtype, patches.bytes);
    const int64_t pw = s.width / s.patch, features = s.channels * s.patch * s.patch;
    for (int64_t b = 0; b < s.batch; ++b) {
      for (int64_t c = 0; c < s.channels; ++c) {
        for (int64_t i = 0; i < s.height; ++i) {
          for (int64_t j = 0; j < s.width; ++j) {
            const int64_t patch = b * (s.height / s.patch) * pw + (i / s.patch) * pw + j / s.patch;
            const int64_t feature = (c * s.patch + i % s.patch) * s.patch + j % s.patch;
            ASSERT_EQ(got[patch * features + feature],
                      images.exact[((b * s.channels + c) * s.height + i) * s.width + j]);
          }
        }
      }
    }
    // Backward of the forward is the identity; <P x, y> = <x, P^T y>.
    p.in = patches.data();
    p.out = back.data();
    p.backward = true;
    ASSERT_TRUE(PatchifyCpu(p).ok());
    EXPECT_EQ(back.bytes, images.bytes);
    HostData pty = PoisonedData(dtype, s.n());
    p.in = y.data();
    p.out = pty.data();
    ASSERT_TRUE(PatchifyCpu(p).ok());
    double lhs = 0, rhs = 0;
    const std::vector<double> pty_values = ValuesOf(dtype, pty.bytes);
    for (int64_t i = 0; i < s.n(); ++i) {
      lhs += got[i] * y.exact[i];
      rhs += images.exact[i] * pty_values[i];
    }
    EXPECT_NEAR(lhs, rhs, 1e-9 * s.n());
  }
}

INSTANTIATE_TEST_SUITE_P(DTypes, PatchifyCpuTest, ::testing::Values(DType::kF32, DType::kBF16),
                         [](const auto& info) { return std::string(DTypeName(info.param)); });

// A Conv2d (out, c, p, p) with stride p, in float64, equals Patchify then x W^T with W the
// Conv2d weight flattened to (out, c*p*p).
TEST(PatchifyCpuTest, ThenALinearLayerIsAPatchConvolution) {
  constexpr int64_t kBatch = 2, kChannels = 3, kSide = 12, kPatch = 4, kOut = 5;
  constexpr int64_t kGrid = kSide / kPatch, kFeatures = kChannels * kPatch * kPatch;
  std::mt19937 random(std::random_device{}());
  const HostData images =
      RandomData(DType::kF32, kBatch * kChannels * kSide * kSide, random, -1, 1);
  const HostData weight = RandomData(DType::kF32, kOut * kFeatures, random, -1, 1);
  HostData patches = PoisonedData(DType::kF32, images.exact.size());
  ASSERT_TRUE(PatchifyCpu({.in = images.data(),
                           .out = patches.data(),
                           .batch = kBatch,
                           .channels = kChannels,
                           .height = kSide,
                           .width = kSide,
                           .patch = kPatch})
                  .ok());
  const std::vector<double> rows = ValuesOf(DType::kF32, patches.bytes);
  for (int64_t b = 0; b < kBatch; ++b) {
    for (int64_t o = 0; o < kOut; ++o) {
      for (int64_t gy = 0; gy < kGrid; ++gy) {
        for (int64_t gx = 0; gx < kGrid; ++gx) {
          double conv = 0, linear = 0;
          for (int64_t c = 0; c < kChannels; ++c) {
            for (int64_t ky = 0; ky < kPatch; ++ky) {
              for (int64_t kx = 0; kx < kPatch; ++kx) {
                conv += weight.exact[((o * kChannels + c) * kPatch + ky) * kPatch + kx] *
                        images.exact[((b * kChannels + c) * kSide + gy * kPatch + ky) * kSide +
                                     gx * kPatch + kx];
              }
            }
          }
          const int64_t row = (b * kGrid + gy) * kGrid + gx;
          for (int64_t f = 0; f < kFeatures; ++f) {
            linear += rows[row * kFeatures + f] * weight.exact[o * kFeatures + f];
          }
          EXPECT_NEAR(conv, linear, 1e-12);
        }
      }
    }
  }
}

// L(images) = sum(patches * u): the backward with the patches' gradient u must equal central
// differences of L.
TEST(PatchifyCpuGradientTest, BackwardMatchesCentralDifferences) {
  std::mt19937 random(29);
  const int64_t batch = 2, channels = 2, height = 4, width = 6, patch = 2;
  const int64_t n = batch * channels * height * width;
  const HostData images = RandomData(DType::kF32, n, random, -1, 1);
  const HostData u = RandomData(DType::kF32, n, random, -1, 1);
  const PatchifyParams shape{
      .batch = batch, .channels = channels, .height = height, .width = width, .patch = patch};
  auto forward = [&](const std::vector<float>& at) {
    std::vector<float> patches(n);
    PatchifyParams p = shape;
    p.in = at.data();
    p.out = patches.data();
    EXPECT_TRUE(PatchifyCpu(p).ok());
    return patches;
  };
  std::vector<float> dimages(n, std::nanf(""));
  PatchifyParams back = shape;
  back.in = u.data();
  back.out = dimages.data();
  back.backward = true;
  ASSERT_TRUE(PatchifyCpu(back).ok());
  ExpectCentralDifferences(images, u, dimages, forward);
}

TEST(PatchifyCpuTest, BadArgumentsAreNamed) {
  EXPECT_THAT(PatchifyCpu({.dtype = DType::kI32, .patch = 1}).message(), HasSubstr("dtype i32"));
  EXPECT_THAT(
      PatchifyCpu({.batch = 1, .channels = 3, .height = 10, .width = 8, .patch = 4}).message(),
      HasSubstr("bad shape: batch 1, channels 3, image 10x8, patch 4"));
  EXPECT_THAT(PatchifyCpu({.patch = 0}).message(), HasSubstr("bad shape"));
  EXPECT_THAT(
      PatchifyCpu({.batch = 1, .channels = 1, .height = 2, .width = 2, .patch = 2}).message(),
      HasSubstr("in is null"));
  EXPECT_TRUE(PatchifyCpu({.batch = 0, .channels = 3, .height = 4, .width = 4, .patch = 2}).ok());
}

}  // namespace
}  // namespace mimo::kernels
