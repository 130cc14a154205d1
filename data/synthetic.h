// The built-in dataset of the embedded default job: generated images of coloured shapes (and,
// for every other sample, a tone as log-mel frames) with captions that describe them, so a model
// has something real to learn. Sample i depends on (seed, i) alone.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "data/sample.h"

namespace mimo::data {

struct SyntheticOptions {
  int64_t num_samples = 10000;  // > 0; indices wrap around.
  // Images: (num_channels, image_size, image_size) in [-1, 1]; num_channels 1 or 3.
  int64_t image_size = 32;
  int64_t num_channels = 3;
  // Audio: 0 mel bins means no audio. Clips are a multiple of frames_per_token frames, at most
  // max_frames.
  int64_t num_mel_bins = 0;
  int64_t frames_per_token = 1;
  int64_t max_frames = 0;
  uint64_t seed = 1234;
};

absl::Status ValidateSyntheticOptions(const SyntheticOptions& options);

// Sample `index` (taken modulo num_samples): a shape (circle, square, triangle or cross) of one
// of 6 colours in one of 4 quadrants on a dark background with pixel noise; odd samples also a
// tone (low, middle or high: energy in that third of the mel bins) of a random length.
Sample MakeSyntheticSample(const SyntheticOptions& options, int64_t index);

}  // namespace mimo::data
