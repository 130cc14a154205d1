// DecodeImage: PNG (RGB, gray, RGBA over white) exactly, JPEG (RGB, gray) within JPEG's error,
// refusals of unknown, corrupt and truncated files naming the member.
#include "data/image_decode.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>

#include "tests/data/test_files.h"

namespace mimo::data {
namespace {

using testing::EncodeJpeg;
using testing::EncodePng;
using ::testing::HasSubstr;

// A 16x8 image: left half red, right half blue (or gray 40 and 200).
std::vector<uint8_t> Halves(int channels) {
  std::vector<uint8_t> p;
  for (int y = 0; y < 8; ++y) {
    for (int x = 0; x < 16; ++x) {
      if (channels == 1) {
        p.push_back(x < 8 ? 40 : 200);
      } else {
        const uint8_t rgb[2][3] = {{255, 0, 0}, {0, 0, 255}};
        p.insert(p.end(), rgb[x >= 8], rgb[x >= 8] + 3);
      }
    }
  }
  return p;
}

TEST(ImageDecodeTest, PngRgbAndGrayExactly) {
  for (const int channels : {1, 3}) {
    auto image = DecodeImage(EncodePng(16, 8, channels, Halves(channels)), "s/0.png");
    ASSERT_TRUE(image.ok()) << image.status();
    EXPECT_EQ(image->width, 16);
    EXPECT_EQ(image->height, 8);
    EXPECT_EQ(image->channels, channels);
    EXPECT_EQ(image->pixels, Halves(channels));
  }
}

TEST(ImageDecodeTest, PngAlphaIsCompositedOntoWhite) {
  // Opaque green, then fully transparent, then half-transparent black.
  const std::vector<uint8_t> rgba = {0, 255, 0, 255, 10, 20, 30, 0, 0, 0, 0, 128};
  auto image = DecodeImage(EncodePng(3, 1, 4, rgba), "a.png");
  ASSERT_TRUE(image.ok()) << image.status();
  ASSERT_EQ(image->channels, 3);
  EXPECT_EQ(std::vector<uint8_t>(image->pixels.begin(), image->pixels.begin() + 6),
            (std::vector<uint8_t>{0, 255, 0, 255, 255, 255}));
  EXPECT_NEAR(image->pixels[6], 187, 3);  // sRGB blend of white and black at half coverage.
}

TEST(ImageDecodeTest, JpegRgbAndGray) {
  for (const int channels : {1, 3}) {
    auto image = DecodeImage(EncodeJpeg(16, 8, channels, Halves(channels)), "s/0.jpg");
    ASSERT_TRUE(image.ok()) << image.status();
    EXPECT_EQ(image->width, 16);
    EXPECT_EQ(image->height, 8);
    EXPECT_EQ(image->channels, channels);
    // Away from the edge between the halves the colours survive compression.
    const std::vector<uint8_t> want = Halves(channels);
    for (int y = 0; y < 8; ++y) {
      for (const int x : {0, 2, 13, 15}) {
        for (int c = 0; c < channels; ++c) {
          const size_t i = (y * 16 + x) * channels + c;
          EXPECT_NEAR(image->pixels[i], want[i], 12) << x << "," << y << " channel " << c;
        }
      }
    }
  }
}

TEST(ImageDecodeTest, RefusesUnknownCorruptAndTruncatedFiles) {
  auto image = DecodeImage("GIF89a....", "shard-003.tar:0001.gif");
  EXPECT_EQ(image.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(image.status().message(), HasSubstr("shard-003.tar:0001.gif"));
  EXPECT_THAT(image.status().message(), HasSubstr("not a PNG or JPEG"));

  const std::string png = EncodePng(16, 8, 3, Halves(3));
  image = DecodeImage(png.substr(0, png.size() / 2), "cut.png");
  EXPECT_EQ(image.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(image.status().message(), HasSubstr("cut.png"));

  const std::string jpeg = EncodeJpeg(16, 8, 3, Halves(3));
  image = DecodeImage(jpeg.substr(0, jpeg.size() / 2), "cut.jpg");
  EXPECT_EQ(image.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(image.status().message(), HasSubstr("cut.jpg"));
  image = DecodeImage(jpeg.substr(0, 40), "header.jpg");
  EXPECT_EQ(image.status().code(), absl::StatusCode::kInvalidArgument);

  std::string garbage = jpeg;
  for (size_t i = 200; i < garbage.size() - 2; ++i) garbage[i] = static_cast<char>(i * 31);
  image = DecodeImage(garbage, "garbage.jpg");
  EXPECT_EQ(image.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace mimo::data
