// PackSamples: placeholders and their positions, labels on caption and EOS only, lengths,
// captions cut to seq_length, another tokenizer's ids, errors.
#include "data/micro_batch.h"

#include <gtest/gtest.h>

#include <algorithm>

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
  EXPECT_EQ(b->audio_frames, (std::vector<int32_t>{4}));
}

// Sequence parallelism splits the tokens into equal blocks: a padding sequence fills them up.
TEST(MicroBatchTest, PadsToAMultipleWithAnUnlabelledSequence) {
  const MicroBatchOptions o{.seq_length = 64, .image_tokens = 2, .pad_to_multiple = 4};
  auto b = PackSamples({Make("ab", 0), Make("xyz", 0)}, o);  // 6 + 7 tokens.
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->lengths, (std::vector<int32_t>{6, 7, 3}));
  ASSERT_EQ(b->tokens.size(), 16u);
  EXPECT_EQ(std::vector<int32_t>(b->tokens.begin() + 13, b->tokens.end()),
            (std::vector<int32_t>(3, T::kEos)));
  EXPECT_EQ(std::vector<int32_t>(b->labels.begin() + 13, b->labels.end()),
            (std::vector<int32_t>(3, -1)));
  EXPECT_EQ(b->labelled, 7);  // As without padding: 2 + 3 caption tokens and 2 EOS.
  EXPECT_EQ(b->padding, 3);
  EXPECT_EQ(b->vision_positions, (std::vector<int32_t>{1, 2, 7, 8}));
  auto exact = PackSamples({Make("ab", 0), Make("xy", 0)}, o);  // 6 + 6: 12 already.
  ASSERT_TRUE(exact.ok());
  EXPECT_EQ(exact->lengths, (std::vector<int32_t>{6, 6}));
  EXPECT_EQ(exact->padding, 0);
  EXPECT_EQ(PackSamples({Make("a", 0)}, {.seq_length = 8, .pad_to_multiple = 0}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// Context parallelism splits every sequence into equal chunks: each is padded after its EOS.
TEST(MicroBatchTest, PadsEachSequenceToAMultiple) {
  const MicroBatchOptions o{.seq_length = 64, .image_tokens = 2, .sequence_multiple = 4};
  auto b = PackSamples({Make("ab", 0), Make("xyz", 0), Make("uv", 0)}, o);  // 6 + 7 + 6 tokens.
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->lengths, (std::vector<int32_t>{8, 8, 8}));
  EXPECT_EQ(b->sequence_padding, (std::vector<int32_t>{2, 1, 2}));
  EXPECT_EQ(b->padding, 0);
  ASSERT_EQ(b->tokens.size(), 24u);
  EXPECT_EQ(std::vector<int32_t>(b->tokens.begin() + 5, b->tokens.begin() + 8),
            (std::vector<int32_t>(3, T::kEos)));  // Sample 0's EOS, then its 2 padding ids.
  EXPECT_EQ(b->labels[5], -1);  // EOS ends the sample: nothing to predict, padding or not.
  EXPECT_EQ(b->labels[6], -1);
  EXPECT_EQ(b->labels[7], -1);
  EXPECT_EQ(b->labelled, 10);  // As without padding.
  EXPECT_EQ(b->vision_positions, (std::vector<int32_t>{1, 2, 9, 10, 17, 18}));
  EXPECT_EQ(PackSamples({Make("a", 0)}, {.seq_length = 8, .sequence_multiple = 0}).status().code(),
            absl::StatusCode::kInvalidArgument);
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

// A tokenizer of another vocabulary: one id per word (100 + its length), specials far from the
// byte tokenizer's.
class WordTokenizer : public Tokenizer {
 public:
  std::vector<int32_t> Encode(absl::string_view text) const override {
    std::vector<int32_t> ids;
    size_t start = 0;
    while (start <= text.size()) {
      const size_t end = std::min(text.find(' ', start), text.size());
      if (end > start) ids.push_back(static_cast<int32_t>(100 + end - start));
      start = end + 1;
    }
    return ids;
  }
  std::string Decode(const std::vector<int32_t>&) const override { return ""; }
  bool IsText(int32_t id) const override { return id >= 100 && id < 1000; }
  int32_t bos() const override { return 1000; }
  int32_t eos() const override { return 1001; }
  int32_t image() const override { return 1002; }
  int32_t audio() const override { return 1003; }
  int32_t vocab_size() const override { return 1004; }
};

TEST(MicroBatchTest, PacksInAnyTokenizersIds) {
  const WordTokenizer w;
  auto b = PackSamples({Make("a bb ccc", 2)},
                       {.seq_length = 64, .image_tokens = 1, .frames_per_token = 1}, w);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->tokens, (std::vector<int32_t>{1000, 1002, 1003, 1003, 101, 102, 103, 1001}));
  EXPECT_EQ(b->labels, (std::vector<int32_t>{-1, -1, -1, 101, 102, 103, 1001, -1}));
  EXPECT_EQ(b->labelled, 4);
  EXPECT_EQ(b->vision_positions, (std::vector<int32_t>{1}));
  EXPECT_EQ(b->audio_positions, (std::vector<int32_t>{2, 3}));
  // Without a tokenizer: the byte tokenizer's ids, as before.
  auto bytes = PackSamples({Make("a", 0)}, {.seq_length = 8, .image_tokens = 1});
  ASSERT_TRUE(bytes.ok());
  EXPECT_EQ(bytes->tokens, (std::vector<int32_t>{T::kBos, T::kImage, 'a', T::kEos}));
}

TEST(MicroBatchTest, ImagesMustBeThereAndAlike) {
  Sample no_image = Make("a", 0);
  no_image.image.clear();
  EXPECT_EQ(PackSamples({no_image}, {.seq_length = 8, .image_tokens = 1}).status().code(),
            absl::StatusCode::kInvalidArgument);
  Sample smaller = Make("a", 0);
  smaller.image.resize(12);
  EXPECT_EQ(
      PackSamples({Make("a", 0), smaller}, {.seq_length = 8, .image_tokens = 1}).status().code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(PackSamples({no_image}, {.seq_length = 8}).ok());  // Images not used.
}

// A rank that does not run the vision encoder packs undecoded images as it packs decoded ones.
TEST(MicroBatchTest, UndecodedImagesTakeTheirTokens) {
  Sample undecoded = Make("ab", 0);
  undecoded.image.clear();
  undecoded.image_undecoded = true;
  const MicroBatchOptions o{.seq_length = 16, .image_tokens = 2};
  auto b = PackSamples({undecoded, undecoded}, o);
  auto decoded = PackSamples({Make("ab", 0), Make("ab", 0)}, o);
  ASSERT_TRUE(b.ok()) << b.status();
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(b->tokens, decoded->tokens);
  EXPECT_EQ(b->labels, decoded->labels);
  EXPECT_EQ(b->vision_positions, decoded->vision_positions);
  EXPECT_EQ(b->num_images, 2);
  // One batch holds one kind: a decoded image beside an undecoded one is refused.
  EXPECT_EQ(PackSamples({undecoded, Make("a", 0)}, o).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace mimo::data
