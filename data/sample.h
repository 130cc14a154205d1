// One training sample on the host: an image, an optional audio clip and its caption.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace mimo::data {

struct Sample {
  // (num_channels, image_size, image_size) in [-1, 1], channels first; empty when the dataset
  // has no images.
  std::vector<float> image;
  // The sample has an image that was not decoded (WebDatasetOptions::decode_images false):
  // image is empty, yet the sample takes its image tokens.
  bool image_undecoded = false;
  std::vector<float> audio;  // (frames, num_mel_bins), empty for a sample without audio.
  int64_t audio_frames = 0;
  std::string caption;  // E.g. "a red circle at the top left, with a low tone".
};

}  // namespace mimo::data
