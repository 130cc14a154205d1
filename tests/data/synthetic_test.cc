// The synthetic dataset: samples depend on (seed, index) alone; images in range with the shape
// drawn where the caption says; audio on odd samples only, its frames a multiple of
// frames_per_token; options validated.
#include "data/synthetic.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <set>

namespace mimo::data {
namespace {

SyntheticOptions Options() {
  return {.num_samples = 100,
          .image_size = 16,
          .num_channels = 3,
          .num_mel_bins = 12,
          .frames_per_token = 4,
          .max_frames = 32,
          .seed = 7};
}

TEST(SyntheticTest, SamplesAreDeterministicAndVaried) {
  const SyntheticOptions o = Options();
  std::set<std::string> captions;
  for (int64_t i = 0; i < 100; ++i) {
    const Sample a = MakeSyntheticSample(o, i), b = MakeSyntheticSample(o, i);
    EXPECT_EQ(a.image, b.image);
    EXPECT_EQ(a.caption, b.caption);
    EXPECT_EQ(MakeSyntheticSample(o, i + 100).caption, a.caption);  // Wraps around.
    captions.insert(a.caption);
    ASSERT_EQ(a.image.size(), 3u * 16 * 16);
    for (float v : a.image) ASSERT_TRUE(v >= -1.0f && v <= 1.0f);
    if (i % 2 == 0) {
      EXPECT_TRUE(a.audio.empty());
      EXPECT_EQ(a.caption.find("tone"), std::string::npos);
    } else {
      EXPECT_GT(a.audio_frames, 0);
      EXPECT_LE(a.audio_frames, 32);
      EXPECT_EQ(a.audio_frames % 4, 0);
      EXPECT_EQ(a.audio.size(), static_cast<size_t>(a.audio_frames * 12));
      EXPECT_NE(a.caption.find("tone"), std::string::npos);
    }
  }
  EXPECT_GT(captions.size(), 40u);
  SyntheticOptions other = o;
  other.seed = 8;
  EXPECT_NE(MakeSyntheticSample(other, 3).image, MakeSyntheticSample(o, 3).image);
}

// The caption's quadrant is where the bright pixels are.
TEST(SyntheticTest, TheShapeIsWhereTheCaptionSays) {
  SyntheticOptions o = Options();
  o.num_channels = 1;
  for (int64_t i = 0; i < 40; ++i) {
    const Sample s = MakeSyntheticSample(o, i);
    double sum[4] = {0, 0, 0, 0};
    for (int y = 0; y < 16; ++y) {
      for (int x = 0; x < 16; ++x) sum[(y >= 8) * 2 + (x >= 8)] += s.image[y * 16 + x];
    }
    const int brightest = static_cast<int>(std::max_element(sum, sum + 4) - sum);
    const char* places[] = {"top left", "top right", "bottom left", "bottom right"};
    EXPECT_NE(s.caption.find(places[brightest]), std::string::npos) << s.caption;
  }
}

TEST(SyntheticTest, RejectsBadOptions) {
  SyntheticOptions o = Options();
  o.num_channels = 2;
  EXPECT_FALSE(ValidateSyntheticOptions(o).ok());
  o = Options();
  o.max_frames = 2;
  EXPECT_FALSE(ValidateSyntheticOptions(o).ok());
  EXPECT_TRUE(ValidateSyntheticOptions(Options()).ok());
}

}  // namespace
}  // namespace mimo::data
