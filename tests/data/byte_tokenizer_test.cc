// ByteTokenizer: bytes round-trip (UTF-8 included), control bytes never become special ids;
// the Tokenizer interface gives its constants.
#include "data/byte_tokenizer.h"

#include <gtest/gtest.h>

namespace mimo::data {
namespace {

TEST(ByteTokenizerTest, RoundTripsText) {
  const ByteTokenizer tokenizer;
  const std::string text = "a red circle\tat the top\nleft \xc3\xa9";
  const std::vector<int32_t> ids = tokenizer.Encode(text);
  ASSERT_EQ(ids.size(), text.size());
  EXPECT_EQ(ids[0], 'a');
  EXPECT_EQ(ids.back(), 0xa9);
  EXPECT_EQ(tokenizer.Decode(ids), text);
}

TEST(ByteTokenizerTest, ControlBytesBecomeSpacesAndSpecialsDecodeToNothing) {
  const ByteTokenizer tokenizer;
  const std::vector<int32_t> ids = tokenizer.Encode(std::string("a\x01\x03z\0", 5));
  EXPECT_EQ(ids, (std::vector<int32_t>{'a', ' ', ' ', 'z', ' '}));
  for (int32_t id : ids) EXPECT_TRUE(tokenizer.IsText(id));
  EXPECT_EQ(tokenizer.Decode({ByteTokenizer::kBos, 'h', ByteTokenizer::kImage, 'i',
                              ByteTokenizer::kEos, 300, -1}),
            "hi");
}

// Through the Tokenizer interface: the special ids are the static constants.
TEST(ByteTokenizerTest, ImplementsTokenizer) {
  const Tokenizer& t = DefaultTokenizer();
  EXPECT_EQ(t.bos(), ByteTokenizer::kBos);
  EXPECT_EQ(t.eos(), ByteTokenizer::kEos);
  EXPECT_EQ(t.image(), ByteTokenizer::kImage);
  EXPECT_EQ(t.audio(), ByteTokenizer::kAudio);
  EXPECT_EQ(t.vocab_size(), ByteTokenizer::kVocabSize);
  EXPECT_EQ(t.Encode("ab"), (std::vector<int32_t>{'a', 'b'}));
  for (const int32_t id : {t.bos(), t.eos(), t.image(), t.audio(), -1, 256}) {
    EXPECT_FALSE(t.IsText(id)) << id;
  }
}

}  // namespace
}  // namespace mimo::data
