// Samples packed into one micro-batch on the host (THD: each sample its own sequence), in the
// layout the MIMO model reads: token ids with the modality placeholders, next-token labels on
// the text only, and where the encoders' tokens go (their inputs, the samples' images and audio,
// stay in the samples: the upload copies each straight to the device).
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "data/sample.h"
#include "data/synthetic.h"
#include "data/tokenizer.h"

namespace mimo::data {

struct MicroBatchOptions {
  int64_t seq_length = 0;    // Tokens of one sample at most (its caption is cut to fit); > 0.
  int64_t image_tokens = 0;  // Vision-encoder tokens per image; 0: images are not used.
  // Audio frames per audio-encoder token; 0: audio is not used.
  int64_t frames_per_token = 0;
  // The packed tokens are padded to a multiple of this (sequence parallelism splits them into
  // equal row blocks): a last sequence of EOS ids without labels. 1: no padding.
  int64_t pad_to_multiple = 1;
  // Each sample's sequence is padded to a multiple of this (context parallelism splits every
  // sequence into 2 cp equal chunks; Megatron pads each to a multiple of 2 cp, times tp with
  // sequence parallelism): EOS ids without labels after its own EOS. 1: no padding.
  int64_t sequence_multiple = 1;
};

struct HostMicroBatch {
  std::vector<int32_t> tokens;  // (T,) [BOS] [IMAGE]... [AUDIO]... caption [EOS] per sample.
  std::vector<int32_t> labels;  // (T,) the next token where it is caption or EOS, else -1.
  // Per sample (the packed sequences, with their sequence_multiple padding), then the padding
  // sequence if there is one.
  std::vector<int32_t> lengths;
  std::vector<int32_t> sequence_padding;  // Per sample: the EOS ids padding its sequence.
  int64_t num_images = 0;                 // Samples with an image (all, when images are used).
  std::vector<int32_t> vision_positions;  // (N * image_tokens,) token indices, in order.
  std::vector<int32_t> audio_frames;      // Per clip (the samples with audio, in order).
  std::vector<int32_t> audio_positions;   // (frames / frames_per_token,) token indices.
  int64_t labelled = 0;                   // Tokens with a label.
  int64_t padding = 0;                    // Tokens of the padding sequence (0: none).
};

// Packs `samples` with `tokenizer`'s ids (its BOS, EOS, image and audio placeholders; the
// caption's labels are the ids it calls text, and EOS). InvalidArgument when a sample's
// placeholders (with BOS and EOS) do not fit seq_length, when images are used (image_tokens >
// 0) and a sample has none (neither decoded nor Sample::image_undecoded) or one of another size
// than the first's, or when a clip's frames are not a multiple of frames_per_token.
absl::StatusOr<HostMicroBatch> PackSamples(const std::vector<Sample>& samples,
                                           const MicroBatchOptions& options,
                                           const Tokenizer& tokenizer);
// With the byte tokenizer (DefaultTokenizer()).
absl::StatusOr<HostMicroBatch> PackSamples(const std::vector<Sample>& samples,
                                           const MicroBatchOptions& options);

}  // namespace mimo::data
