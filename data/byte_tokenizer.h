// The default tokenizer: one token per UTF-8 byte, with the control bytes text never needs
// standing in for the special tokens, so the vocabulary is 256 ids.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "data/tokenizer.h"

namespace mimo::data {

// Stateless: construct one where needed, or use DefaultTokenizer().
class ByteTokenizer : public Tokenizer {
 public:
  static constexpr int32_t kPad = 0;
  static constexpr int32_t kBos = 1;    // Starts every sample.
  static constexpr int32_t kEos = 2;    // Ends every sample's text.
  static constexpr int32_t kImage = 3;  // One per vision-encoder token.
  static constexpr int32_t kAudio = 4;  // One per audio-encoder token.
  static constexpr int32_t kVocabSize = 256;

  // Each byte of `text` as its id; control bytes other than tab and newline (they would collide
  // with the special ids) become spaces.
  std::vector<int32_t> Encode(absl::string_view text) const override;
  // The text bytes of `ids`; special ids and ids outside [0, 256) are skipped.
  std::string Decode(const std::vector<int32_t>& ids) const override;
  // Whether `id` is text (not a special id).
  bool IsText(int32_t id) const override { return IsTextByte(id); }
  static constexpr bool IsTextByte(int32_t id) {
    return id >= 0 && id < kVocabSize && (id >= 0x20 || id == '\t' || id == '\n');
  }

  int32_t bos() const override { return kBos; }
  int32_t eos() const override { return kEos; }
  int32_t image() const override { return kImage; }
  int32_t audio() const override { return kAudio; }
  int32_t vocab_size() const override { return kVocabSize; }
};

// The process-wide ByteTokenizer (what PackSamples uses when given no tokenizer).
const ByteTokenizer& DefaultTokenizer();

}  // namespace mimo::data
