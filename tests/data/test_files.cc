// The data tests' file writers: a tar writer following the ustar layout, libpng's and libjpeg's
// encoders to memory, the npy header format.
#include "tests/data/test_files.h"

// clang-format off
#include <cstdio>  // jpeglib.h needs FILE and size_t first.
#include <jpeglib.h>
// clang-format on
#include <png.h>
#include <stdlib.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>

namespace mimo::data::testing {

TempDir::TempDir() {
  const char* tmp = std::getenv("TMPDIR");
  std::string templ =
      std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") + "/mimo-data-test-XXXXXX";
  if (mkdtemp(templ.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
  path_ = templ;
}

TempDir::~TempDir() {
  std::error_code ignored;
  std::filesystem::remove_all(path_, ignored);
}

void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) throw std::runtime_error("cannot write " + path);
}

namespace {

void Octal(char* field, int width, int64_t value) {
  std::snprintf(field, width, "%0*llo", width - 1, static_cast<long long>(value));
}

}  // namespace

void TarBuilder::Header(const std::string& name, const std::string& prefix, int64_t size, char type,
                        bool base256) {
  char h[512] = {};
  std::memcpy(h, name.data(), std::min<size_t>(name.size(), 100));
  Octal(h + 100, 8, 0644);
  Octal(h + 108, 8, 1000);
  Octal(h + 116, 8, 1000);
  if (base256) {
    h[124] = static_cast<char>(0x80);
    for (int i = 0; i < 8; ++i) h[135 - i] = static_cast<char>((size >> (8 * i)) & 0xff);
  } else {
    Octal(h + 124, 12, size);
  }
  Octal(h + 136, 12, 1700000000);
  h[156] = type;
  std::memcpy(h + 257,
              "ustar\0"
              "00",
              8);
  std::memcpy(h + 265, "user", 4);
  std::memcpy(h + 297, "group", 5);
  std::memcpy(h + 345, prefix.data(), std::min<size_t>(prefix.size(), 155));
  std::memset(h + kTarChecksumOffset, ' ', 8);
  unsigned sum = 0;
  for (const char c : h) sum += static_cast<unsigned char>(c);
  std::snprintf(h + kTarChecksumOffset, 8, "%06o", sum);  // Six digits, NUL, space.
  h[kTarChecksumOffset + 7] = ' ';
  out_.append(h, sizeof(h));
}

void TarBuilder::Data(const std::string& data) {
  out_ += data;
  out_.append((512 - data.size() % 512) % 512, '\0');
}

TarBuilder& TarBuilder::File(const std::string& name, const std::string& data, NameStyle style) {
  switch (style) {
    case NameStyle::kPlain:
      Header(name, "", static_cast<int64_t>(data.size()), '0');
      break;
    case NameStyle::kUstar: {
      const size_t slash = name.rfind('/');
      Header(name.substr(slash + 1), name.substr(0, slash), static_cast<int64_t>(data.size()), '0');
      break;
    }
    case NameStyle::kGnuLong:
      Header("././@LongLink", "", static_cast<int64_t>(name.size() + 1), 'L');
      Data(name + std::string(1, '\0'));
      Header(name.substr(0, 99), "", static_cast<int64_t>(data.size()), '0');
      break;
    case NameStyle::kPaxPath: {
      const std::string body = " path=" + name + "\n";
      // The record's length counts its own digits.
      size_t len = body.size() + 1;
      while (std::to_string(len).size() + body.size() != len) ++len;
      const std::string record = std::to_string(len) + body;
      const std::string extra = "20 mtime=1700000000\n";  // A record the reader ignores.
      Header("PaxHeaders/placeholder", "", static_cast<int64_t>(record.size() + extra.size()), 'x');
      Data(extra + record);
      Header("placeholder-name", "", static_cast<int64_t>(data.size()), '0');
      break;
    }
  }
  Data(data);
  return *this;
}

TarBuilder& TarBuilder::Special(const std::string& name, char type) {
  Header(name, "", 0, type);
  return *this;
}

TarBuilder& TarBuilder::Base256File(const std::string& name, const std::string& data) {
  Header(name, "", static_cast<int64_t>(data.size()), '0', /*base256=*/true);
  Data(data);
  return *this;
}

std::string TarBuilder::Finish() const { return out_ + std::string(1024, '\0'); }

std::string EncodePng(int width, int height, int channels, const std::vector<uint8_t>& pixels) {
  png_image image;
  std::memset(&image, 0, sizeof(image));
  image.version = PNG_IMAGE_VERSION;
  image.width = width;
  image.height = height;
  image.format = channels == 1 ? PNG_FORMAT_GRAY : channels == 3 ? PNG_FORMAT_RGB : PNG_FORMAT_RGBA;
  png_alloc_size_t size = 0;
  if (!png_image_write_to_memory(&image, nullptr, &size, 0, pixels.data(), 0, nullptr)) {
    throw std::runtime_error(image.message);
  }
  std::string out(size, '\0');
  if (!png_image_write_to_memory(&image, out.data(), &size, 0, pixels.data(), 0, nullptr)) {
    throw std::runtime_error(image.message);
  }
  out.resize(size);
  return out;
}

std::string EncodeJpeg(int width, int height, int channels, const std::vector<uint8_t>& pixels,
                       int quality) {
  jpeg_compress_struct cinfo;
  jpeg_error_mgr errors;
  cinfo.err = jpeg_std_error(&errors);  // Exits on error: fine for a test's own encoder.
  jpeg_create_compress(&cinfo);
  unsigned char* buffer = nullptr;
  unsigned long size = 0;
  jpeg_mem_dest(&cinfo, &buffer, &size);
  cinfo.image_width = width;
  cinfo.image_height = height;
  cinfo.input_components = channels;
  cinfo.in_color_space = channels == 1 ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_set_defaults(&cinfo);
  jpeg_set_quality(&cinfo, quality, TRUE);
  jpeg_start_compress(&cinfo, TRUE);
  while (cinfo.next_scanline < cinfo.image_height) {
    JSAMPROW row =
        const_cast<unsigned char*>(pixels.data() + cinfo.next_scanline * width * channels);
    jpeg_write_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_compress(&cinfo);
  std::string out(reinterpret_cast<const char*>(buffer), size);
  jpeg_destroy_compress(&cinfo);
  std::free(buffer);
  return out;
}

namespace {

// Round-to-nearest float to binary16 for normal, zero and infinite values (enough for tests).
uint16_t FloatToHalf(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000);
  if (std::isinf(f)) return sign | 0x7c00;
  if (f == 0) return sign;
  const int exponent = static_cast<int>((bits >> 23) & 0xff) - 127 + 15;
  const uint32_t mantissa = bits & 0x7fffff;
  return static_cast<uint16_t>(sign | (exponent << 10) | ((mantissa + 0x1000) >> 13));
}

}  // namespace

std::string MakeNpy(const std::vector<int64_t>& shape, const std::vector<float>& values,
                    const std::string& dtype, int version, const std::string& header_dict) {
  std::string dict = header_dict;
  if (dict.empty()) {
    std::string dims;
    for (const int64_t d : shape) dims += std::to_string(d) + ", ";
    if (shape.size() > 1) dims.resize(dims.size() - 2);  // (3,) keeps its comma.
    dict = "{'descr': '" + dtype + "', 'fortran_order': False, 'shape': (" + dims + "), }";
  }
  const size_t prefix = version == 1 ? 10 : 12;
  size_t total = prefix + dict.size() + 1;
  const size_t pad = (64 - total % 64) % 64;
  dict += std::string(pad, ' ') + "\n";
  std::string out = "\x93NUMPY";
  out += static_cast<char>(version);
  out += '\0';
  const uint32_t len = static_cast<uint32_t>(dict.size());
  for (size_t i = 0; i < prefix - 8; ++i) out += static_cast<char>((len >> (8 * i)) & 0xff);
  out += dict;
  for (const float v : values) {
    if (dtype == "<f2") {
      const uint16_t h = FloatToHalf(v);
      out += static_cast<char>(h & 0xff);
      out += static_cast<char>(h >> 8);
    } else {
      char b[4];
      std::memcpy(b, &v, 4);
      out.append(b, 4);
    }
  }
  return out;
}

}  // namespace mimo::data::testing
