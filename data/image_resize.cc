// ResizeAndCrop: per-axis filter taps for the cropped output pixels only, applied separably
// (rows first, straight from the 8-bit pixels, only the rows the crop reads) to each plane.
#include "data/image_resize.h"

#include <algorithm>
#include <cmath>

namespace mimo::data {
namespace {

struct Tap {
  int64_t index;
  float weight;
};

// For output pixels [0, out) along one axis of `in` source pixels scaled to `scaled` and cropped
// from `offset`: the source pixels each one reads and their weights (summing to 1).
std::vector<std::vector<Tap>> AxisTaps(int64_t in, int64_t scaled, int64_t offset, int64_t out) {
  const double step = static_cast<double>(in) / static_cast<double>(scaled);
  std::vector<std::vector<Tap>> taps(out);
  for (int64_t o = 0; o < out; ++o) {
    const double lo = (o + offset) * step;  // The output pixel covers [lo, lo + step).
    if (step <= 2.0) {
      const double centre = lo + 0.5 * step - 0.5;
      const double floor = std::floor(centre);
      const double frac = centre - floor;
      const int64_t i0 = std::clamp<int64_t>(static_cast<int64_t>(floor), 0, in - 1);
      const int64_t i1 = std::clamp<int64_t>(static_cast<int64_t>(floor) + 1, 0, in - 1);
      if (i0 == i1 || frac == 0.0) {
        taps[o].push_back({i0, 1.0f});
      } else {
        taps[o].push_back({i0, static_cast<float>(1.0 - frac)});
        taps[o].push_back({i1, static_cast<float>(frac)});
      }
    } else {
      const double hi = std::min(lo + step, static_cast<double>(in));
      for (int64_t i = static_cast<int64_t>(lo); i < in && i < hi; ++i) {
        const double covered = std::min(hi, i + 1.0) - std::max(lo, static_cast<double>(i));
        if (covered > 0) taps[o].push_back({i, static_cast<float>(covered / (hi - lo))});
      }
    }
  }
  return taps;
}

}  // namespace

std::vector<float> ResizeAndCrop(const DecodedImage& image, int64_t size, int64_t channels) {
  const int64_t w = image.width, h = image.height;
  // Scaled dimensions: the shorter side is `size`.
  int64_t sw = size, sh = size;
  if (w >= h) {
    sw = std::max<int64_t>(size, std::llround(static_cast<double>(w) * size / h));
  } else {
    sh = std::max<int64_t>(size, std::llround(static_cast<double>(h) * size / w));
  }
  const std::vector<std::vector<Tap>> xs = AxisTaps(w, sw, (sw - size) / 2, size);
  const std::vector<std::vector<Tap>> ys = AxisTaps(h, sh, (sh - size) / 2, size);

  // The planes to scale, in [0, 255]: luma or gray for one channel, else R, G, B (a gray
  // image's one plane serves all three). Rows first, read straight from the pixels, and only the
  // rows the columns' taps use, packed: (planes, rows used, size). Packing keeps this
  // intermediate near min(w, h) x size per plane, so a 67 x 1,000,000 image needs about 70
  // rows of it and not all million (planes x h x size floats, 2.7 GB at size 224, killed
  // workers with bad_alloc); each value is still computed as before, so results are the same.
  const int64_t planes = channels == 3 && image.channels == 3 ? 3 : 1;
  const bool luma = planes == 1 && image.channels == 3;
  std::vector<int64_t> used;  // Source rows read, ascending; a tap's row is its index here.
  for (const std::vector<Tap>& taps : ys) {
    for (const Tap& t : taps) used.push_back(t.index);
  }
  std::sort(used.begin(), used.end());
  used.erase(std::unique(used.begin(), used.end()), used.end());
  std::vector<std::vector<Tap>> packed_ys = ys;
  for (std::vector<Tap>& taps : packed_ys) {
    for (Tap& t : taps)
      t.index = std::lower_bound(used.begin(), used.end(), t.index) - used.begin();
  }
  const int64_t n = static_cast<int64_t>(used.size());
  std::vector<float> rows(planes * n * size);
  for (int64_t r = 0; r < n; ++r) {
    const uint8_t* in = image.pixels.data() + used[r] * w * image.channels;
    for (int64_t x = 0; x < size; ++x) {
      float v[3] = {0, 0, 0};
      for (const Tap& t : xs[x]) {
        const uint8_t* px = in + t.index * image.channels;
        if (luma) {
          v[0] += t.weight * (0.299f * px[0] + 0.587f * px[1] + 0.114f * px[2]);
        } else {
          for (int64_t c = 0; c < planes; ++c) v[c] += t.weight * px[c];
        }
      }
      for (int64_t c = 0; c < planes; ++c) rows[(c * n + r) * size + x] = v[c];
    }
  }
  std::vector<float> result(channels * size * size);
  for (int64_t c = 0; c < planes; ++c) {
    for (int64_t y = 0; y < size; ++y) {
      float* out = result.data() + (c * size + y) * size;
      for (int64_t x = 0; x < size; ++x) {
        float v = 0;
        for (const Tap& t : packed_ys[y]) v += t.weight * rows[(c * n + t.index) * size + x];
        out[x] = std::clamp(v / 127.5f - 1.0f, -1.0f, 1.0f);
      }
    }
  }
  for (int64_t c = planes; c < channels; ++c) {  // A gray image's copies.
    std::copy(result.begin(), result.begin() + size * size, result.begin() + c * size * size);
  }
  return result;
}

}  // namespace mimo::data
