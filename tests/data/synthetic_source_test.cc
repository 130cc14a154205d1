// SyntheticSource: the synthetic samples behind SampleSource, options validated at Create.
#include "data/synthetic_source.h"

#include <gtest/gtest.h>

namespace mimo::data {
namespace {

TEST(SyntheticSourceTest, GetIsMakeSyntheticSample) {
  const SyntheticOptions o{.num_samples = 10,
                           .image_size = 8,
                           .num_mel_bins = 4,
                           .frames_per_token = 2,
                           .max_frames = 8};
  auto source = SyntheticSource::Create(o);
  ASSERT_TRUE(source.ok()) << source.status();
  const SampleSource& s = **source;
  EXPECT_EQ(s.num_samples(), 10);
  for (const int64_t i : {0, 3, 17}) {
    auto sample = s.Get(i);
    ASSERT_TRUE(sample.ok()) << sample.status();
    const Sample want = MakeSyntheticSample(o, i);
    EXPECT_EQ(sample->caption, want.caption);
    EXPECT_EQ(sample->image, want.image);
    EXPECT_EQ(sample->audio, want.audio);
  }
  EXPECT_EQ(s.Get(-1).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(SyntheticSourceTest, RejectsBadOptions) {
  EXPECT_EQ(SyntheticSource::Create({.num_channels = 2}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace mimo::data
