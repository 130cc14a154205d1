// ByteTokenizer: bytes round-trip (UTF-8 included), control bytes never become special ids.
#include "data/byte_tokenizer.h"

#include <gtest/gtest.h>

namespace mimo::data {
namespace {

TEST(ByteTokenizerTest, RoundTripsText) {
  const std::string text = "a red circle\tat the top\nleft \xc3\xa9";
  const std::vector<int32_t> ids = ByteTokenizer::Encode(text);
  ASSERT_EQ(ids.size(), text.size());
  EXPECT_EQ(ids[0], 'a');
  EXPECT_EQ(ids.back(), 0xa9);
  EXPECT_EQ(ByteTokenizer::Decode(ids), text);
}

TEST(ByteTokenizerTest, ControlBytesBecomeSpacesAndSpecialsDecodeToNothing) {
  const std::vector<int32_t> ids = ByteTokenizer::Encode(std::string("a\x01\x03z\0", 5));
  EXPECT_EQ(ids, (std::vector<int32_t>{'a', ' ', ' ', 'z', ' '}));
  for (int32_t id : ids) EXPECT_TRUE(ByteTokenizer::IsText(id));
  EXPECT_EQ(ByteTokenizer::Decode({ByteTokenizer::kBos, 'h', ByteTokenizer::kImage, 'i',
                                   ByteTokenizer::kEos, 300, -1}),
            "hi");
}

}  // namespace
}  // namespace mimo::data
