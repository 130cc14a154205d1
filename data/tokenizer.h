// Tokenizer: text to token ids, and the special ids a packed sequence needs (BOS, EOS and the
// image and audio placeholders), whatever the vocabulary.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace mimo::data {

// Implementations are immutable once built, so every method may be called from many threads.
class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // The ids of `text` (UTF-8), without BOS or EOS; never a special id.
  virtual std::vector<int32_t> Encode(absl::string_view text) const = 0;
  // The text of `ids`; special ids and ids outside the vocabulary are skipped.
  virtual std::string Decode(const std::vector<int32_t>& ids) const = 0;
  // Whether `id` is text (what Encode produces and a caption's labels hold), not a special id.
  virtual bool IsText(int32_t id) const = 0;

  virtual int32_t bos() const = 0;    // Starts every sample.
  virtual int32_t eos() const = 0;    // Ends every sample's text.
  virtual int32_t image() const = 0;  // One per vision-encoder token.
  virtual int32_t audio() const = 0;  // One per audio-encoder token.
  // Ids are in [0, vocab_size()): the language model's embedding and output rows.
  virtual int32_t vocab_size() const = 0;
};

}  // namespace mimo::data
