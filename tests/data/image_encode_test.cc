// EncodePng: gray, gray-alpha, RGB and RGBA images that DecodeImage reads back to the same pixels;
// refusals of bad sizes, channel counts and pixel buffers.
#include "data/image_encode.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "data/image_decode.h"

namespace mimo::data {
namespace {

using ::testing::HasSubstr;

std::vector<uint8_t> Gradient(int width, int height, int channels) {
  std::vector<uint8_t> p(static_cast<size_t>(width) * height * channels);
  for (size_t i = 0; i < p.size(); ++i) p[i] = static_cast<uint8_t>(i * 37 % 256);
  return p;
}

TEST(ImageEncodeTest, GrayAndRgbRoundTrip) {
  for (const int channels : {1, 3}) {
    const std::vector<uint8_t> pixels = Gradient(13, 7, channels);
    auto png = EncodePng(13, 7, channels, pixels);
    ASSERT_TRUE(png.ok()) << png.status();
    EXPECT_EQ(png->substr(1, 3), "PNG");
    auto image = DecodeImage(*png, "x.png");
    ASSERT_TRUE(image.ok()) << image.status();
    EXPECT_EQ(image->width, 13);
    EXPECT_EQ(image->height, 7);
    EXPECT_EQ(image->channels, channels);
    EXPECT_EQ(image->pixels, pixels);
  }
}

TEST(ImageEncodeTest, OpaqueAlphaDecodesToTheColours) {
  std::vector<uint8_t> rgba, rgb;
  for (int i = 0; i < 4 * 4; ++i) {
    const uint8_t c[3] = {static_cast<uint8_t>(i * 10), 7, static_cast<uint8_t>(255 - i)};
    rgb.insert(rgb.end(), c, c + 3);
    rgba.insert(rgba.end(), c, c + 3);
    rgba.push_back(255);
  }
  auto png = EncodePng(4, 4, 4, rgba);
  ASSERT_TRUE(png.ok()) << png.status();
  auto image = DecodeImage(*png, "x.png");
  ASSERT_TRUE(image.ok()) << image.status();
  EXPECT_EQ(image->channels, 3);
  EXPECT_EQ(image->pixels, rgb);
  auto gray_alpha = EncodePng(2, 1, 2, {100, 255, 30, 255});
  ASSERT_TRUE(gray_alpha.ok()) << gray_alpha.status();
  image = DecodeImage(*gray_alpha, "y.png");
  ASSERT_TRUE(image.ok()) << image.status();
  EXPECT_EQ(image->pixels, (std::vector<uint8_t>{100, 30}));
}

TEST(ImageEncodeTest, Refusals) {
  EXPECT_THAT(EncodePng(0, 4, 3, {}).status().message(), HasSubstr("0x4"));
  EXPECT_EQ(EncodePng(4, 4, 5, Gradient(4, 4, 5)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(EncodePng(4, 4, 3, Gradient(4, 4, 1)).status().message(),
              HasSubstr("16 bytes for a 4x4x3 image (48)"));
}

}  // namespace
}  // namespace mimo::data
