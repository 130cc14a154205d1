// PackSamples: placeholders and their positions, labels on caption and EOS only, lengths,
// captions cut to seq_length, errors.
#include "data/micro_batch.h"

#include <gtest/gtest.h>

#include "data/byte_tokenizer.h"

namespace mimo::data {
namespace {

using T = ByteTokenizer;

Sample Make(const std::string& caption, int64_t frames) {
  Sample s;
  s.image.assign(3 * 4 * 4, 0.5f);
  s.caption = caption;
  s.audio_frames = frames;
  s.audio.assign(frames * 2, 1.0f);
  return s;
}

TEST(MicroBatchTest, PacksPlaceholdersTextAndLabels) {
  auto b = PackSamples({Make("ab", 0), Make("xyz", 4)},
                       {.seq_length = 64, .image_tokens = 2, .frames_per_token = 2});
  ASSERT_TRUE(b.ok()) << b.status();
  // Sample 0: BOS IMG IMG a b EOS; sample 1: BOS IMG IMG AUD AUD x y z EOS.
  EXPECT_EQ(b->lengths, (std::vector<int32_t>{6, 9}));
  EXPECT_EQ(b->tokens, (std::vector<int32_t>{T::kBos, T::kImage, T::kImage, 'a', 'b', T::kEos,
                                             T::kBos, T::kImage, T::kImage, T::kAudio, T::kAudio,
                                             'x', 'y', 'z', T::kEos}));
  EXPECT_EQ(b->labels, (std::vector<int32_t>{-1, -1, 'a', 'b', T::kEos, -1, -1, -1, -1, -1, 'x',
                                             'y', 'z', T::kEos, -1}));
  EXPECT_EQ(b->labelled, 7);
  EXPECT_EQ(b->vision_positions, (std::vector<int32_t>{1, 2, 7, 8}));
  EXPECT_EQ(b->audio_positions, (std::vector<int32_t>{9, 10}));
  EXPECT_EQ(b->num_images, 2);
  EXPECT_EQ(b->images.size(), 2u * 48);
  EXPECT_EQ(b->audio_frames, (std::vector<int32_t>{4}));
  EXPECT_EQ(b->audio.size(), 8u);
}

TEST(MicroBatchTest, CutsCaptionsToTheSequenceLength) {
  auto b = PackSamples({Make("abcdefgh", 0)}, {.seq_length = 6, .image_tokens = 1});
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->tokens, (std::vector<int32_t>{T::kBos, T::kImage, 'a', 'b', 'c', T::kEos}));
  EXPECT_EQ(PackSamples({Make("a", 0)}, {.seq_length = 3, .image_tokens = 2}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PackSamples({Make("a", 3)}, {.seq_length = 30, .frames_per_token = 2}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace mimo::data
