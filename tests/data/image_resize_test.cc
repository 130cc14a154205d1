// ResizeAndCrop: the centre crop of a non-square image, gray and RGB in both channel counts,
// [-1, 1] values in (C, H, W), bilinear enlarging, box-filtered shrinking, and images of extreme
// aspect (as a naive reference does them, with no buffer near the size of the scaled image).
#include "data/image_resize.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <new>

// The largest single allocation made while g_track_allocations is set: the global operator new
// is replaced in this test program so ResizeAndCrop's buffers can be measured.
namespace {
std::atomic<bool> g_track_allocations{false};
std::atomic<size_t> g_largest_allocation{0};
}  // namespace

void* operator new(size_t n) {
  if (g_track_allocations.load()) {
    size_t seen = g_largest_allocation.load();
    while (n > seen && !g_largest_allocation.compare_exchange_weak(seen, n)) {
    }
  }
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
// GCC takes free() of what this operator new returned, once inlined, for a mismatch.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }
#pragma GCC diagnostic pop

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

// The header's definition, in doubles and one pixel at a time: output pixel o of an axis of `in`
// pixels scaled to `scaled` and cropped from `offset` reads these source pixels with these
// weights.
std::vector<std::pair<int64_t, double>> ReferenceWeights(int64_t in, int64_t scaled, int64_t offset,
                                                         int64_t o) {
  const double step = static_cast<double>(in) / scaled;
  const double lo = (o + offset) * step;
  std::vector<std::pair<int64_t, double>> weights;
  if (step <= 2.0) {  // Bilinear, centres aligned, edges clamped.
    const double centre = lo + 0.5 * step - 0.5;
    const double f = std::floor(centre);
    const auto clamp = [&](double i) { return std::clamp<int64_t>(int64_t(i), 0, in - 1); };
    weights.push_back({clamp(f), 1.0 - (centre - f)});
    weights.push_back({clamp(f + 1), centre - f});
  } else {  // Box: the area each source pixel covers of [lo, lo + step).
    const double hi = std::min(lo + step, double(in));
    for (int64_t i = int64_t(lo); i < hi; ++i) {
      weights.push_back({i, (std::min(hi, i + 1.0) - std::max(lo, double(i))) / (hi - lo)});
    }
  }
  return weights;
}

std::vector<float> ReferenceResizeAndCrop(const DecodedImage& image, int64_t size) {
  const int64_t w = image.width, h = image.height;
  const int64_t sw = w >= h ? std::max<int64_t>(size, std::llround(double(w) * size / h)) : size;
  const int64_t sh = w >= h ? size : std::max<int64_t>(size, std::llround(double(h) * size / w));
  std::vector<float> out(image.channels * size * size);
  for (int64_t y = 0; y < size; ++y) {
    for (int64_t x = 0; x < size; ++x) {
      for (int64_t c = 0; c < image.channels; ++c) {
        double v = 0;
        for (const auto& [sy, wy] : ReferenceWeights(h, sh, (sh - size) / 2, y)) {
          for (const auto& [sx, wx] : ReferenceWeights(w, sw, (sw - size) / 2, x)) {
            v += wy * wx * image.pixels[(sy * w + sx) * image.channels + c];
          }
        }
        out[(c * size + y) * size + x] = static_cast<float>(v / 127.5 - 1.0);
      }
    }
  }
  return out;
}

// A width x height image whose pixels vary along both axes (and between channels).
DecodedImage Pattern(int64_t width, int64_t height, int channels) {
  DecodedImage image{.width = int(width), .height = int(height), .channels = channels};
  image.pixels.resize(width * height * channels);
  for (int64_t y = 0; y < height; ++y) {
    for (int64_t x = 0; x < width; ++x) {
      for (int c = 0; c < channels; ++c) {
        image.pixels[(y * width + x) * channels + c] =
            static_cast<uint8_t>((x * 37 + y * 11 + (y / 97) * 5 + c * 80) % 256);
      }
    }
  }
  return image;
}

// The largest allocation ResizeAndCrop makes for `image`.
size_t LargestAllocation(const DecodedImage& image, int64_t size, int64_t channels) {
  g_largest_allocation = 0;
  g_track_allocations = true;
  const std::vector<float> out = ResizeAndCrop(image, size, channels);
  g_track_allocations = false;
  return g_largest_allocation;
}

TEST(ImageResizeTest, ExtremeAspectImagesMatchTheReference) {
  // Tall and wide, enlarging the short side (bilinear both ways) and shrinking both (box).
  for (const auto& [width, height, size] :
       {std::tuple{3, 30000, 16}, std::tuple{30000, 3, 16}, std::tuple{300, 30000, 16},
        std::tuple{30000, 300, 16}, std::tuple{67, 5000, 224}}) {
    for (const int channels : {1, 3}) {
      SCOPED_TRACE(testing::Message()
                   << width << "x" << height << "x" << channels << " to " << size);
      const DecodedImage image = Pattern(width, height, channels);
      EXPECT_THAT(ResizeAndCrop(image, size, channels),
                  Pointwise(FloatNear(1e-4), ReferenceResizeAndCrop(image, size)));
    }
  }
}

TEST(ImageResizeTest, ExtremeAspectImagesNeedNoBufferOfTheirLongSide) {
  // Buffers of planes x height x size floats (179 MB for this tall one at 224, 2.7 GB for a
  // 67 x 1,000,000 PNG) made workers die of bad_alloc. The output is 3 x 224 x 224 floats
  // (602 kB): nothing much bigger may be needed, whichever side is long.
  constexpr size_t kLimit = 4 << 20;
  const DecodedImage tall = Pattern(67, 200000, 1);
  EXPECT_LT(LargestAllocation(tall, 224, 3), kLimit);
  EXPECT_LT(LargestAllocation(tall, 224, 1), kLimit);
  const DecodedImage wide = Pattern(200000, 67, 3);
  EXPECT_LT(LargestAllocation(wide, 224, 3), kLimit);
  EXPECT_LT(LargestAllocation(wide, 224, 1), kLimit);
  // And the results are still those of the reference (its middle rows and columns).
  const std::vector<float> out = ResizeAndCrop(tall, 224, 1);
  const std::vector<float> ref = ReferenceResizeAndCrop(tall, 224);
  EXPECT_THAT(out, Pointwise(FloatNear(1e-4), ref));
}

}  // namespace
}  // namespace mimo::data
