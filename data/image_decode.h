// Decoding a sample's image file (PNG with libpng, JPEG with libjpeg-turbo) into 8-bit gray or
// RGB pixels.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace mimo::data {

struct DecodedImage {
  int64_t width = 0;
  int64_t height = 0;
  int channels = 0;             // 1: gray; 3: RGB.
  std::vector<uint8_t> pixels;  // (height, width, channels), the top row first.
};

// Images larger than this many pixels are refused (decompression bombs).
inline constexpr int64_t kMaxImagePixels = int64_t{1} << 26;

// The format is told by the bytes' signature, not the name. PNG: any bit depth, palette and
// tRNS expanded, 16-bit cut to 8; gray (with or without alpha) stays gray, the rest is RGB;
// transparent pixels are composited onto white. JPEG: grayscale stays gray, YCbCr and RGB give
// RGB, CMYK and YCCK are converted to RGB (Adobe's inverted CMYK recognised); a Huffman-coded
// JPEG whose data ends after its last scan (missing only the EOI marker) decodes, as PIL reads it.
// InvalidArgument naming `name` (the tar member, for the message) for an unknown format, a
// corrupt or truncated file (a JPEG cut inside or between its scans, or an arithmetic-coded one
// missing its EOI marker), or an image of more than kMaxImagePixels pixels.
absl::StatusOr<DecodedImage> DecodeImage(absl::string_view bytes, absl::string_view name);

}  // namespace mimo::data
