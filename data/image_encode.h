// Encoding 8-bit pixels as a PNG file in memory (libpng): how mimo-make-shards stores a sample's
// image and the worker its loss plot.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace mimo::data {

// `pixels` (height, width, channels), the top row first, with channels 1 (gray), 2 (gray and
// alpha), 3 (RGB) or 4 (RGBA). InvalidArgument for a size or channel count that is not one of
// these, or pixels of another size; Internal for a libpng failure.
absl::StatusOr<std::string> EncodePng(int width, int height, int channels,
                                      absl::Span<const uint8_t> pixels);

}  // namespace mimo::data
