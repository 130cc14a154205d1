// EncodePng through libpng's simplified API (png_image_write_to_memory): once to size the
// output, once to write it.
#include "data/image_encode.h"

#include <png.h>

#include <cstring>

#include "absl/strings/str_cat.h"

namespace mimo::data {

absl::StatusOr<std::string> EncodePng(int width, int height, int channels,
                                      absl::Span<const uint8_t> pixels) {
  if (width <= 0 || height <= 0 || channels < 1 || channels > 4) {
    return absl::InvalidArgumentError(
        absl::StrCat("EncodePng: a ", width, "x", height, " image of ", channels, " channels"));
  }
  const size_t expected = static_cast<size_t>(width) * height * channels;
  if (pixels.size() != expected) {
    return absl::InvalidArgumentError(absl::StrCat("EncodePng: ", pixels.size(), " bytes for a ",
                                                   width, "x", height, "x", channels, " image (",
                                                   expected, ")"));
  }
  png_image image;
  std::memset(&image, 0, sizeof(image));
  image.version = PNG_IMAGE_VERSION;
  image.width = static_cast<png_uint_32>(width);
  image.height = static_cast<png_uint_32>(height);
  constexpr png_uint_32 kFormats[] = {PNG_FORMAT_GRAY, PNG_FORMAT_GA, PNG_FORMAT_RGB,
                                      PNG_FORMAT_RGBA};
  image.format = kFormats[channels - 1];
  png_alloc_size_t size = 0;
  std::string out;
  if (png_image_write_to_memory(&image, nullptr, &size, 0, pixels.data(), 0, nullptr)) {
    out.resize(size);
    if (png_image_write_to_memory(&image, out.data(), &size, 0, pixels.data(), 0, nullptr)) {
      out.resize(size);
      return out;
    }
  }
  const std::string message = image.message;
  png_image_free(&image);
  return absl::InternalError(absl::StrCat("EncodePng: libpng: ", message));
}

}  // namespace mimo::data
