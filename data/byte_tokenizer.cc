// ByteTokenizer: bytes in, bytes out.
#include "data/byte_tokenizer.h"

namespace mimo::data {

std::vector<int32_t> ByteTokenizer::Encode(absl::string_view text) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size());
  for (const char c : text) {
    const int32_t b = static_cast<unsigned char>(c);
    ids.push_back(IsTextByte(b) ? b : ' ');
  }
  return ids;
}

std::string ByteTokenizer::Decode(const std::vector<int32_t>& ids) const {
  std::string out;
  for (const int32_t id : ids) {
    if (IsTextByte(id)) out.push_back(static_cast<char>(id));
  }
  return out;
}

const ByteTokenizer& DefaultTokenizer() {
  static const ByteTokenizer* const tokenizer = new ByteTokenizer();
  return *tokenizer;
}

}  // namespace mimo::data
