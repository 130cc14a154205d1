// Synthetic samples: the shape, colour, place and tone drawn from a Philox stream keyed by
// (seed, index), the caption written from them.
#include "data/synthetic.h"

#include <algorithm>
#include <cmath>
#include <random>

#include "absl/strings/str_cat.h"

namespace mimo::data {
namespace {

struct Colour {
  const char* name;
  float r, g, b;
};

constexpr Colour kColours[] = {{"red", 1, -1, -1},   {"green", -1, 1, -1}, {"blue", -1, -1, 1},
                               {"yellow", 1, 1, -1}, {"white", 1, 1, 1},   {"purple", 0.5f, -1, 1}};
constexpr const char* kShapes[] = {"circle", "square", "triangle", "cross"};
constexpr const char* kPlaces[] = {"top left", "top right", "bottom left", "bottom right"};
constexpr const char* kTones[] = {"low", "middle", "high"};

// Whether pixel (x, y), relative to the shape's centre, in units of its half size, is inside.
bool Inside(int shape, double x, double y) {
  switch (shape) {
    case 0:
      return x * x + y * y <= 1.0;
    case 1:
      return std::abs(x) <= 0.8 && std::abs(y) <= 0.8;
    case 2:
      return y <= 0.8 && y >= -0.9 && std::abs(x) <= (0.8 - y) * 0.6;
    default:
      return std::abs(x) <= 0.25 || std::abs(y) <= 0.25 ? std::max(std::abs(x), std::abs(y)) <= 1
                                                        : false;
  }
}

}  // namespace

absl::Status ValidateSyntheticOptions(const SyntheticOptions& o) {
  if (o.num_samples < 1 || o.image_size < 4 || (o.num_channels != 1 && o.num_channels != 3)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "SyntheticOptions: needs num_samples >= 1, image_size >= 4 and 1 or 3 channels, got ",
        o.num_samples, ", ", o.image_size, ", ", o.num_channels));
  }
  if (o.num_mel_bins < 0 ||
      (o.num_mel_bins > 0 && (o.frames_per_token < 1 || o.max_frames < o.frames_per_token))) {
    return absl::InvalidArgumentError(
        absl::StrCat("SyntheticOptions: audio needs max_frames >= frames_per_token >= 1, got ",
                     o.max_frames, " and ", o.frames_per_token));
  }
  return absl::OkStatus();
}

Sample MakeSyntheticSample(const SyntheticOptions& o, int64_t index) {
  const uint64_t i = static_cast<uint64_t>(index % o.num_samples);
  std::mt19937_64 random(o.seed * 0x9E3779B97F4A7C15ull + i * 0xBF58476D1CE4E5B9ull + 1);
  const int shape = static_cast<int>(random() % 4);
  const Colour& colour = kColours[random() % 6];
  const int place = static_cast<int>(random() % 4);
  const int64_t n = o.image_size;
  const double half = n / 4.0 * (0.7 + 0.25 * (random() % 1000) / 1000.0);
  const double cx = (place % 2 == 0 ? 0.25 : 0.75) * n, cy = (place < 2 ? 0.25 : 0.75) * n;
  std::normal_distribution<float> noise(0.0f, 0.05f);
  Sample s;
  s.image.assign(o.num_channels * n * n, -0.8f);
  const float rgb[3] = {colour.r, colour.g, colour.b};
  for (int64_t y = 0; y < n; ++y) {
    for (int64_t x = 0; x < n; ++x) {
      const bool in = Inside(shape, (x + 0.5 - cx) / half, (y + 0.5 - cy) / half);
      for (int64_t c = 0; c < o.num_channels; ++c) {
        const float value = in ? (o.num_channels == 3 ? rgb[c] : 1.0f) : -0.8f;
        s.image[(c * n + y) * n + x] = std::clamp(value + noise(random), -1.0f, 1.0f);
      }
    }
  }
  s.caption = absl::StrCat("a ", colour.name, " ", kShapes[shape], " at the ", kPlaces[place]);
  if (o.num_mel_bins > 0 && i % 2 == 1) {
    const int tone = static_cast<int>(random() % 3);
    const int64_t tokens = 1 + static_cast<int64_t>(random() % (o.max_frames / o.frames_per_token));
    s.audio_frames = tokens * o.frames_per_token;
    const int64_t bins = o.num_mel_bins, lo = tone * bins / 3, hi = (tone + 1) * bins / 3;
    s.audio.assign(s.audio_frames * bins, 0.0f);
    for (int64_t f = 0; f < s.audio_frames; ++f) {
      for (int64_t b = 0; b < bins; ++b) {
        s.audio[f * bins + b] =
            (b >= lo && b < std::max(hi, lo + 1) ? 1.0f : -1.0f) + noise(random);
      }
    }
    absl::StrAppend(&s.caption, ", with a ", kTones[tone], " tone");
  }
  return s;
}

}  // namespace mimo::data
