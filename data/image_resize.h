// A decoded image made the model's input: the shorter side scaled to the model's image size,
// the centre cropped square, as floats in [-1, 1] laid out (C, H, W) as synthetic.h does.
#pragma once

#include <cstdint>
#include <vector>

#include "data/image_decode.h"

namespace mimo::data {

// (channels, size, size) floats, value / 127.5 - 1, from `image` (width, height >= 1):
// channels 1 is the luma (0.299 R + 0.587 G + 0.114 B) of an RGB image, or its gray;
// channels 3 is RGB, a gray image replicated. The image is scaled so its shorter side is `size`
// (the longer side rounded to whole pixels) and the centre size x size taken (odd leftovers go
// to the right and the bottom). Scaling is bilinear (pixel centres aligned, edges clamped) when
// enlarging or shrinking by at most 2x per axis, and a box filter (each output pixel the
// area-weighted mean of the source pixels it covers) when shrinking by more, so there is no
// aliasing. Preconditions: size >= 1, channels 1 or 3, a well-formed image.
std::vector<float> ResizeAndCrop(const DecodedImage& image, int64_t size, int64_t channels);

}  // namespace mimo::data
