// The data tests' file writers: tar archives from data/tar_writer.h's header blocks, PNG through
// data/image_encode.h, libjpeg's encoder to memory, npy files from data/npy.h's header.
#include "tests/data/test_files.h"

// clang-format off
#include <cstdio>  // jpeglib.h needs FILE and size_t first.
#include <jpeglib.h>
// clang-format on
#include <stdlib.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <utility>

#include "data/image_encode.h"
#include "data/npy.h"

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

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

std::string PatternBytes(size_t n, char seed) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>(seed + i * 7);
  return s;
}

void TarBuilder::Header(const std::string& name, const std::string& prefix, int64_t size, char type,
                        bool base256) {
  absl::StatusOr<std::string> block = TarHeaderBlock({.name = name.substr(0, 100),
                                                      .prefix = prefix.substr(0, 155),
                                                      .size = size,
                                                      .type = type,
                                                      .uid = 1000,
                                                      .gid = 1000,
                                                      .uname = "user",
                                                      .gname = "group",
                                                      .mtime = 1700000000,
                                                      .base256_size = base256});
  if (!block.ok()) throw std::runtime_error(block.status().ToString());
  out_ += *block;
}

void TarBuilder::Data(const std::string& data) {
  out_ += data;
  out_.append(TarPadding(static_cast<int64_t>(data.size())), '\0');
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

TarBuilder& TarBuilder::Link(const std::string& name, char type, const std::string& target,
                             bool gnu_long_target) {
  if (gnu_long_target) {
    Header("././@LongLink", "", static_cast<int64_t>(target.size() + 1), 'K');
    Data(target + std::string(1, '\0'));
  }
  Header(name, "", 0, type);
  // TarHeaderBlock has no link name: written into the block here, and the checksum redone.
  char* block = out_.data() + out_.size() - kTarBlockSize;
  std::memset(block + 157, 0, 100);
  std::memcpy(block + 157, target.data(),
              std::min<size_t>(target.size(), gnu_long_target ? 99 : 100));
  std::memset(block + kTarChecksumOffset, ' ', kTarChecksumWidth);
  unsigned sum = 0;
  for (int64_t i = 0; i < kTarBlockSize; ++i) sum += static_cast<unsigned char>(block[i]);
  std::snprintf(block + kTarChecksumOffset, kTarChecksumWidth, "%06o", sum);  // Then NUL, space.
  return *this;
}

TarBuilder& TarBuilder::Base256File(const std::string& name, const std::string& data) {
  Header(name, "", static_cast<int64_t>(data.size()), '0', /*base256=*/true);
  Data(data);
  return *this;
}

std::string TarBuilder::Finish() const { return out_ + std::string(1024, '\0'); }

std::string EncodePng(int width, int height, int channels, const std::vector<uint8_t>& pixels) {
  absl::StatusOr<std::string> png = data::EncodePng(width, height, channels, pixels);
  if (!png.ok()) throw std::runtime_error(png.status().ToString());
  return *std::move(png);
}

std::string EncodeJpeg(int width, int height, int channels, const std::vector<uint8_t>& pixels,
                       int quality, bool progressive) {
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
  if (progressive) jpeg_simple_progression(&cinfo);
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
  std::string out =
      NpyPreamble(header_dict.empty() ? NpyHeaderDict(dtype, shape) : header_dict, version);
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
