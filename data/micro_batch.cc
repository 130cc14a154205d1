// PackSamples: one sequence per sample, placeholders first, the caption cut to fit, in any
// tokenizer's ids.
#include "data/micro_batch.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "data/byte_tokenizer.h"

namespace mimo::data {

absl::StatusOr<HostMicroBatch> PackSamples(const std::vector<Sample>& samples,
                                           const MicroBatchOptions& options) {
  return PackSamples(samples, options, DefaultTokenizer());
}

absl::StatusOr<HostMicroBatch> PackSamples(const std::vector<Sample>& samples,
                                           const MicroBatchOptions& o, const Tokenizer& t) {
  if (o.seq_length < 1 || o.image_tokens < 0 || o.frames_per_token < 0 || o.pad_to_multiple < 1 ||
      o.sequence_multiple < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "MicroBatchOptions: seq_length ", o.seq_length, ", image_tokens ", o.image_tokens,
        ", frames_per_token ", o.frames_per_token, ", pad_to_multiple ", o.pad_to_multiple,
        ", sequence_multiple ", o.sequence_multiple));
  }
  HostMicroBatch b;
  for (size_t i = 0; i < samples.size(); ++i) {
    const Sample& s = samples[i];
    const int64_t start = static_cast<int64_t>(b.tokens.size());
    std::vector<int32_t> seq{t.bos()};
    if (o.image_tokens > 0) {
      if ((s.image.empty() && !s.image_undecoded) || s.image.size() != samples[0].image.size()) {
        return absl::InvalidArgumentError(
            absl::StrCat("sample ", i, ": an image of ", s.image.size(), " values where ",
                         samples[0].image.size(), " (sample 0's) and not 0 are expected"));
      }
      for (int64_t k = 0; k < o.image_tokens; ++k) {
        b.vision_positions.push_back(static_cast<int32_t>(start + seq.size()));
        seq.push_back(t.image());
      }
      ++b.num_images;
    }
    if (o.frames_per_token > 0 && s.audio_frames > 0) {
      if (s.audio_frames % o.frames_per_token != 0) {
        return absl::InvalidArgumentError(absl::StrCat("sample ", i, ": ", s.audio_frames,
                                                       " audio frames, not a multiple of ",
                                                       o.frames_per_token));
      }
      for (int64_t k = 0; k < s.audio_frames / o.frames_per_token; ++k) {
        b.audio_positions.push_back(static_cast<int32_t>(start + seq.size()));
        seq.push_back(t.audio());
      }
      b.audio_frames.push_back(static_cast<int32_t>(s.audio_frames));
    }
    const int64_t room = o.seq_length - static_cast<int64_t>(seq.size()) - 1;  // Before EOS.
    if (room < 0) {
      return absl::InvalidArgumentError(absl::StrCat("sample ", i, ": ", seq.size() + 1,
                                                     " tokens of placeholders, BOS and EOS exceed ",
                                                     "seq_length ", o.seq_length));
    }
    std::vector<int32_t> text = t.Encode(s.caption);
    if (static_cast<int64_t>(text.size()) > room) text.resize(room);
    seq.insert(seq.end(), text.begin(), text.end());
    seq.push_back(t.eos());
    for (size_t j = 0; j < seq.size(); ++j) {
      const bool next_is_target =
          j + 1 < seq.size() && (t.IsText(seq[j + 1]) || seq[j + 1] == t.eos());
      b.tokens.push_back(seq[j]);
      b.labels.push_back(next_is_target ? seq[j + 1] : -1);
      b.labelled += next_is_target ? 1 : 0;
    }
    const int64_t n = static_cast<int64_t>(seq.size());
    const int64_t pad = (o.sequence_multiple - n % o.sequence_multiple) % o.sequence_multiple;
    b.tokens.insert(b.tokens.end(), pad, t.eos());
    b.labels.insert(b.labels.end(), pad, -1);
    b.lengths.push_back(static_cast<int32_t>(n + pad));
    b.sequence_padding.push_back(static_cast<int32_t>(pad));
  }
  const int64_t total = static_cast<int64_t>(b.tokens.size());
  if (const int64_t pad = (o.pad_to_multiple - total % o.pad_to_multiple) % o.pad_to_multiple;
      pad > 0) {
    b.tokens.insert(b.tokens.end(), pad, t.eos());
    b.labels.insert(b.labels.end(), pad, -1);
    b.lengths.push_back(static_cast<int32_t>(pad));
    b.padding = pad;
  }
  return b;
}

}  // namespace mimo::data
