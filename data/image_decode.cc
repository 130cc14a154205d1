// DecodeImage: libpng's simplified API for PNG (gAMA ignored, 16-bit samples taken as sRGB);
// libjpeg's decompressor from memory for JPEG, its fatal errors brought back with setjmp/longjmp
// out of C code only.
#include "data/image_decode.h"

// clang-format off
#include <cstdio>  // jpeglib.h needs FILE and size_t first.
#include <jpeglib.h>
#include <jerror.h>
// clang-format on
#include <png.h>

#include <csetjmp>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace mimo::data {
namespace {

constexpr unsigned char kPngSignature[] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
constexpr unsigned char kJpegSignature[] = {0xff, 0xd8, 0xff};

bool StartsWith(absl::string_view bytes, const unsigned char* signature, size_t n) {
  return bytes.size() >= n && std::memcmp(bytes.data(), signature, n) == 0;
}

absl::Status TooLarge(absl::string_view name, int64_t width, int64_t height) {
  return absl::InvalidArgumentError(absl::StrCat("image '", name, "': ", width, "x", height,
                                                 " is more than ", kMaxImagePixels, " pixels"));
}

// The PNG without its gAMA chunk, or empty if it has none (before IDAT, where the format puts
// it). PIL, and so torchvision's loaders, ignore gAMA, where libpng's simplified API converts
// from the file's gamma to sRGB: an image with gAMA 1.0 came out brighter than the same pixels
// without it. Dropping the chunk leaves the other chunks and their CRCs as they were.
std::string WithoutGamma(absl::string_view bytes) {
  size_t pos = sizeof(kPngSignature);
  std::string out;  // The bytes kept so far, once a gAMA chunk was found.
  size_t kept = 0;  // Of `bytes`, up to here copied to `out` or dropped.
  while (pos + 12 <= bytes.size()) {
    const auto* p = reinterpret_cast<const unsigned char*>(bytes.data() + pos);
    const size_t length = (size_t{p[0]} << 24) | (size_t{p[1]} << 16) | (p[2] << 8) | p[3];
    const absl::string_view type = bytes.substr(pos + 4, 4);
    if (type == "IDAT" || type == "IEND" || length > bytes.size() - pos - 12) break;
    if (type == "gAMA") {  // Every one: a second would be applied where the first was dropped.
      absl::StrAppend(&out, bytes.substr(kept, pos - kept));
      kept = pos + 12 + length;
    }
    pos += 12 + length;
  }
  if (kept == 0) return "";
  absl::StrAppend(&out, bytes.substr(kept));
  return out;
}

absl::StatusOr<DecodedImage> DecodePng(absl::string_view bytes, absl::string_view name) {
  const std::string without_gamma = WithoutGamma(bytes);
  if (!without_gamma.empty()) bytes = without_gamma;
  png_image png;
  std::memset(&png, 0, sizeof(png));
  png.version = PNG_IMAGE_VERSION;
  const auto failed = [&](const char* stage) {
    const std::string message = png.message;
    png_image_free(&png);
    return absl::InvalidArgumentError(
        absl::StrCat("image '", name, "': PNG ", stage, " failed: ", message));
  };
  if (!png_image_begin_read_from_memory(&png, bytes.data(), bytes.size())) {
    return failed("header");
  }
  DecodedImage image;
  image.width = png.width;
  image.height = png.height;
  if (image.width * image.height > kMaxImagePixels) {
    png_image_free(&png);
    return TooLarge(name, image.width, image.height);
  }
  // 16-bit samples with no gAMA (now all of them) are sRGB, as PIL takes them, not linear as
  // libpng would: a 16-bit PNG decodes to its 8-bit twin's values (value x 257 gives value),
  // where it came out brighter.
  png.flags |= PNG_IMAGE_FLAG_16BIT_sRGB;
  const bool color = (png.format & PNG_FORMAT_FLAG_COLOR) != 0;
  image.channels = color ? 3 : 1;
  png.format = color ? PNG_FORMAT_RGB : PNG_FORMAT_GRAY;
  image.pixels.resize(PNG_IMAGE_SIZE(png));
  const png_color white{255, 255, 255};
  if (!png_image_finish_read(&png, &white, image.pixels.data(), 0, nullptr)) {
    return failed("decoding");
  }
  return image;
}

// libjpeg's error manager with where to jump back to and the message of a fatal error, and what
// it was told of the data's end and the scans read before it.
struct JpegErrors {
  jpeg_error_mgr manager;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
  bool ended_early = false;  // JWRN_JPEG_EOF came: the data ended before an EOI marker.
  bool header_cut = false;   // A scan's header (SOS segment) was read past the data's end.
  // By component index: named by a scan whose whole header came before the data's end.
  bool scanned[MAX_COMPONENTS] = {};
};

// The message of a fatal error; one once the data ended early says so (the decoder read its
// source's stand-in EOI marker where data was wanted).
void JpegErrorExit(j_common_ptr cinfo) {
  JpegErrors* errors = reinterpret_cast<JpegErrors*>(cinfo->err);
  char message[JMSG_LENGTH_MAX];
  (*cinfo->err->format_message)(cinfo, message);
  std::snprintf(errors->message, sizeof(errors->message),
                errors->ended_early ? "%s, where the data ends early (truncated file)" : "%s",
                message);
  std::longjmp(errors->jump, 1);
}

[[noreturn]] void JpegFail(j_common_ptr cinfo, const char* message) {
  JpegErrors* errors = reinterpret_cast<JpegErrors*>(cinfo->err);
  std::snprintf(errors->message, sizeof(errors->message), "%s", message);
  std::longjmp(errors->jump, 1);
}

// Warnings of missing data (a segment cut short) are fatal, where libjpeg would fill the rest of
// the image with gray; others (e.g. extraneous bytes) are ignored. The end of the data before an
// EOI marker (JWRN_JPEG_EOF; the source then feeds the decoder EOI markers) is noted and judged by
// IncompleteJpeg once decoding is done, with the scans whose headers came before it (from the
// trace of each SOS marker, whose last item is JTRC_SOS_PARAMS).
void JpegMessage(j_common_ptr cinfo, int level) {
  JpegErrors* errors = reinterpret_cast<JpegErrors*>(cinfo->err);
  const int code = cinfo->err->msg_code;
  if (code == JTRC_SOS_PARAMS && cinfo->is_decompressor) {
    if (errors->ended_early) {
      errors->header_cut = true;
      return;
    }
    const auto* dinfo = reinterpret_cast<const jpeg_decompress_struct*>(cinfo);
    for (int i = 0; i < dinfo->comps_in_scan && i < MAX_COMPS_IN_SCAN; ++i) {
      const jpeg_component_info* component = dinfo->cur_comp_info[i];
      if (component != nullptr && component->component_index >= 0 &&
          component->component_index < MAX_COMPONENTS) {
        errors->scanned[component->component_index] = true;
      }
    }
    return;
  }
  if (level >= 0) return;
  if (code == JWRN_JPEG_EOF) {
    errors->ended_early = true;
  } else if (code == JWRN_HIT_MARKER) {
    // A Huffman decoder wanting bits past its scan's data: zeros would be decoded.
    if (errors->ended_early) JpegFail(cinfo, "the data ends inside a scan (truncated file)");
    JpegErrorExit(cinfo);
  }
}

// Whether a progressive JPEG's scans gave every coefficient its last bit: one cut between scans
// ends with no cut scan (so no JWRN_HIT_MARKER) yet lacks the detail of those after it. Read
// before jpeg_finish_decompress, which frees coef_bits.
bool AllScansRead(const jpeg_decompress_struct& cinfo) {
  if (!cinfo.progressive_mode) return true;
  for (int c = 0; c < cinfo.num_components; ++c) {
    for (int k = 0; k < DCTSIZE2; ++k) {
      if (cinfo.coef_bits[c][k] != 0) return false;
    }
  }
  return true;
}

// Why a JPEG whose data ended before its EOI marker lacks some of its image, or null where it is
// whole but for the marker (or data after its last scan), as PIL takes it. That is so only where
// Huffman-coded: its decoder tells of wanting bits past a scan's data (JWRN_HIT_MARKER, fatal), so
// a scan read through was whole, where an arithmetic decoder reads zeros there without a word.
// Then every component must have been named by a scan whose header was read whole (a sequential
// JPEG of several scans can end between them), and in a progressive JPEG every coefficient must
// have its last bit (`all_bits`).
const char* IncompleteJpeg(const jpeg_decompress_struct& cinfo, const JpegErrors& errors,
                           bool all_bits) {
  if (cinfo.arith_code) {
    return "arithmetic-coded data ends before its EOI marker, so its last scan can't be told "
           "whole (truncated file)";
  }
  if (errors.header_cut) return "the data ends inside a scan's header (truncated file)";
  for (int c = 0; c < cinfo.num_components && c < MAX_COMPONENTS; ++c) {
    if (!errors.scanned[c]) return "the data ends before its last scan (truncated file)";
  }
  if (!all_bits) return "the data ends before its last scan (truncated file)";
  return nullptr;
}

// Decodes into `image` (its pixels sized here); false with `errors->message` set on failure.
// Nothing with a destructor lives in this frame, so the longjmp out of libjpeg skips none.
bool DecodeJpegInto(absl::string_view bytes, DecodedImage* image, bool* too_large,
                    JpegErrors* errors) {
  jpeg_decompress_struct cinfo;
  cinfo.err = jpeg_std_error(&errors->manager);
  errors->manager.error_exit = JpegErrorExit;
  errors->manager.emit_message = JpegMessage;
  errors->message[0] = '\0';
  if (setjmp(errors->jump)) {
    jpeg_destroy_decompress(&cinfo);
    return false;
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, reinterpret_cast<const unsigned char*>(bytes.data()),
               static_cast<unsigned long>(bytes.size()));
  jpeg_read_header(&cinfo, TRUE);
  const bool cmyk = cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK;
  const bool gray = cinfo.jpeg_color_space == JCS_GRAYSCALE;
  cinfo.out_color_space = cmyk ? JCS_CMYK : gray ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_start_decompress(&cinfo);
  image->width = cinfo.output_width;
  image->height = cinfo.output_height;
  image->channels = gray ? 1 : 3;
  if (image->width * image->height > kMaxImagePixels) {
    *too_large = true;
    jpeg_destroy_decompress(&cinfo);
    return false;
  }
  const int64_t in_channels = cinfo.output_components;  // 1, 3 or 4 (CMYK).
  image->pixels.resize(image->width * image->height * image->channels);
  // One decoded row (libjpeg's pool owns it), copied or converted into the pixels.
  JSAMPARRAY row =
      (*cinfo.mem->alloc_sarray)(reinterpret_cast<j_common_ptr>(&cinfo), JPOOL_IMAGE,
                                 static_cast<JDIMENSION>(image->width * in_channels), 1);
  const bool inverted = cinfo.saw_Adobe_marker;  // Adobe writes CMYK inverted.
  while (cinfo.output_scanline < cinfo.output_height) {
    const int64_t y = cinfo.output_scanline;
    jpeg_read_scanlines(&cinfo, row, 1);
    uint8_t* out = image->pixels.data() + y * image->width * image->channels;
    if (!cmyk) {
      std::memcpy(out, row[0], image->width * image->channels);
      continue;
    }
    for (int64_t x = 0; x < image->width; ++x) {
      const uint8_t* p = row[0] + 4 * x;
      const int k = inverted ? p[3] : 255 - p[3];
      for (int c = 0; c < 3; ++c) {
        const int ink = inverted ? p[c] : 255 - p[c];
        out[3 * x + c] = static_cast<uint8_t>((ink * k + 127) / 255);
      }
    }
  }
  const bool all_bits = AllScansRead(cinfo);
  jpeg_finish_decompress(&cinfo);  // Reads on to the EOI marker, or the data's end.
  const char* incomplete = errors->ended_early ? IncompleteJpeg(cinfo, *errors, all_bits) : nullptr;
  jpeg_destroy_decompress(&cinfo);
  if (incomplete != nullptr) {
    std::snprintf(errors->message, sizeof(errors->message), "%s", incomplete);
    return false;
  }
  return true;
}

absl::StatusOr<DecodedImage> DecodeJpeg(absl::string_view bytes, absl::string_view name) {
  DecodedImage image;
  JpegErrors errors;
  bool too_large = false;
  if (!DecodeJpegInto(bytes, &image, &too_large, &errors)) {
    if (too_large) return TooLarge(name, image.width, image.height);
    return absl::InvalidArgumentError(
        absl::StrCat("image '", name, "': JPEG decoding failed: ", errors.message));
  }
  return image;
}

}  // namespace

absl::StatusOr<DecodedImage> DecodeImage(absl::string_view bytes, absl::string_view name) {
  if (StartsWith(bytes, kPngSignature, sizeof(kPngSignature))) return DecodePng(bytes, name);
  if (StartsWith(bytes, kJpegSignature, sizeof(kJpegSignature))) return DecodeJpeg(bytes, name);
  return absl::InvalidArgumentError(absl::StrCat(
      "image '", name, "': not a PNG or JPEG file (unknown signature, ", bytes.size(), " bytes)"));
}

}  // namespace mimo::data
