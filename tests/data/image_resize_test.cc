// ResizeAndCrop: the centre crop of a non-square image, gray and RGB in both channel counts,
// [-1, 1] values in (C, H, W), bilinear enlarging, box-filtered shrinking.
#include "data/image_resize.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace mimo::data {
namespace {

using ::testing::FloatNear;
using ::testing::Pointwise;

float Value(double byte) { return static_cast<float>(byte / 127.5 - 1.0); }

// A width x height image whose pixel (x, y) has R = 10 x, G = 10 y, B = 7.
DecodedImage Gradient(int width, int height) {
  DecodedImage image{.width = width, .height = height, .channels = 3};
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) {
      image.pixels.insert(image.pixels.end(),
                          {static_cast<uint8_t>(10 * x), static_cast<uint8_t>(10 * y), 7});
    }
  }
  return image;
}

TEST(ImageResizeTest, WideImageGivesItsCentreColumns) {
  // 8x4 to 4: the height already fits, so columns 2..5 are taken as they are.
  const std::vector<float> out = ResizeAndCrop(Gradient(8, 4), 4, 3);
  ASSERT_EQ(out.size(), 3u * 4 * 4);
  for (int y = 0; y < 4; ++y) {
    for (int x = 0; x < 4; ++x) {
      EXPECT_FLOAT_EQ(out[(0 * 4 + y) * 4 + x], Value(10 * (x + 2)));
      EXPECT_FLOAT_EQ(out[(1 * 4 + y) * 4 + x], Value(10 * y));
      EXPECT_FLOAT_EQ(out[(2 * 4 + y) * 4 + x], Value(7));
    }
  }
  // A tall one: rows 3..6 of a 4x10.
  const std::vector<float> tall = ResizeAndCrop(Gradient(4, 10), 4, 3);
  for (int y = 0; y < 4; ++y) EXPECT_FLOAT_EQ(tall[(1 * 4 + y) * 4], Value(10 * (y + 3)));
}

TEST(ImageResizeTest, GrayAndRgbInEitherChannelCount) {
  DecodedImage gray{.width = 2, .height = 2, .channels = 1, .pixels = {0, 255, 51, 102}};
  const std::vector<float> three = ResizeAndCrop(gray, 2, 3);
  ASSERT_EQ(three.size(), 12u);
  const std::vector<float> plane = {-1.0f, 1.0f, Value(51), Value(102)};
  for (int c = 0; c < 3; ++c) {
    EXPECT_THAT(std::vector<float>(three.begin() + 4 * c, three.begin() + 4 * c + 4),
                Pointwise(FloatNear(1e-6), plane));
  }
  EXPECT_THAT(ResizeAndCrop(gray, 2, 1), Pointwise(FloatNear(1e-6), plane));
  DecodedImage rgb{.width = 1, .height = 1, .channels = 3, .pixels = {200, 100, 50}};
  const std::vector<float> luma = ResizeAndCrop(rgb, 1, 1);
  ASSERT_EQ(luma.size(), 1u);
  EXPECT_NEAR(luma[0], Value(0.299 * 200 + 0.587 * 100 + 0.114 * 50), 1e-5);
}

TEST(ImageResizeTest, ShrinkingAveragesAndEnlargingInterpolates) {
  // 16x16 of 4x4 blocks, each block one value: shrinking 4x gives the blocks (box filter).
  DecodedImage blocks{.width = 16, .height = 16, .channels = 1};
  for (int y = 0; y < 16; ++y) {
    for (int x = 0; x < 16; ++x)
      blocks.pixels.push_back(static_cast<uint8_t>(16 * (y / 4) + x / 4));
  }
  const std::vector<float> small = ResizeAndCrop(blocks, 4, 1);
  for (int y = 0; y < 4; ++y) {
    for (int x = 0; x < 4; ++x) EXPECT_NEAR(small[y * 4 + x], Value(16 * y + x), 1e-5);
  }
  // A one-pixel checkerboard shrunk 8x is its mean, not an alias of it.
  DecodedImage checker{.width = 32, .height = 32, .channels = 1};
  for (int y = 0; y < 32; ++y) {
    for (int x = 0; x < 32; ++x) checker.pixels.push_back((x + y) % 2 ? 255 : 0);
  }
  for (const float v : ResizeAndCrop(checker, 4, 1)) EXPECT_NEAR(v, 0.0f, 1e-5);
  // Shrinking 3:1 (box, fractional coverage) keeps a constant image constant.
  DecodedImage flat{
      .width = 10, .height = 10, .channels = 1, .pixels = std::vector<uint8_t>(100, 90)};
  for (const float v : ResizeAndCrop(flat, 3, 1)) EXPECT_NEAR(v, Value(90), 1e-5);
  // An odd leftover goes to the right: the 1x1 crop of a 2x1 image is its left pixel.
  DecodedImage two{.width = 2, .height = 1, .channels = 1, .pixels = {0, 200}};
  EXPECT_EQ(ResizeAndCrop(two, 1, 1), std::vector<float>{-1.0f});
  // 2 pixels to 4: output centres fall a quarter pixel apart in the source, edges clamped.
  DecodedImage square{.width = 2, .height = 2, .channels = 1, .pixels = {0, 200, 0, 200}};
  const std::vector<float> big = ResizeAndCrop(square, 4, 1);
  const float row[4] = {Value(0), Value(50), Value(150), Value(200)};
  for (int y = 0; y < 4; ++y) {
    for (int x = 0; x < 4; ++x) EXPECT_NEAR(big[y * 4 + x], row[x], 1e-5);
  }
}

}  // namespace
}  // namespace mimo::data
