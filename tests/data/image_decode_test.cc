// DecodeImage: PNG (RGB, gray, RGBA over white; 16-bit as its 8-bit twin, gAMA ignored) exactly,
// JPEG (RGB, gray) within JPEG's error, refusals of unknown, corrupt and truncated files naming the
// member.
#include "data/image_decode.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <png.h>

// clang-format off
#include <cstdio>  // jpeglib.h needs FILE and size_t first.
#include <jpeglib.h>
// clang-format on

#include <cstdlib>
#include <string>
#include <vector>

#include "tests/data/test_files.h"

namespace mimo::data {
namespace {

using testing::EncodeJpeg;
using testing::EncodePng;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

// A 16x8 image: left half red, right half blue (or gray 40 and 200).
std::vector<uint8_t> Halves(int channels) {
  std::vector<uint8_t> p;
  for (int y = 0; y < 8; ++y) {
    for (int x = 0; x < 16; ++x) {
      if (channels == 1) {
        p.push_back(x < 8 ? 40 : 200);
      } else {
        const uint8_t rgb[2][3] = {{255, 0, 0}, {0, 0, 255}};
        p.insert(p.end(), rgb[x >= 8], rgb[x >= 8] + 3);
      }
    }
  }
  return p;
}

TEST(ImageDecodeTest, PngRgbAndGrayExactly) {
  for (const int channels : {1, 3}) {
    auto image = DecodeImage(EncodePng(16, 8, channels, Halves(channels)), "s/0.png");
    ASSERT_TRUE(image.ok()) << image.status();
    EXPECT_EQ(image->width, 16);
    EXPECT_EQ(image->height, 8);
    EXPECT_EQ(image->channels, channels);
    EXPECT_EQ(image->pixels, Halves(channels));
  }
}

TEST(ImageDecodeTest, PngAlphaIsCompositedOntoWhite) {
  // Opaque green, then fully transparent, then half-transparent black.
  const std::vector<uint8_t> rgba = {0, 255, 0, 255, 10, 20, 30, 0, 0, 0, 0, 128};
  auto image = DecodeImage(EncodePng(3, 1, 4, rgba), "a.png");
  ASSERT_TRUE(image.ok()) << image.status();
  ASSERT_EQ(image->channels, 3);
  EXPECT_EQ(std::vector<uint8_t>(image->pixels.begin(), image->pixels.begin() + 6),
            (std::vector<uint8_t>{0, 255, 0, 255, 255, 255}));
  EXPECT_NEAR(image->pixels[6], 187, 3);  // sRGB blend of white and black at half coverage.
}

// A PNG of `depth` bits (8 or 16) with samples value (or value x 257 at 16 bits) of 8-bit
// `pixels`, channels 1 or 3, with a gAMA chunk of `gamma` unless it is 0.
std::string EncodePngOf(int width, int height, int channels, int depth,
                        const std::vector<uint8_t>& pixels, double gamma = 0) {
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png_create_info_struct(png);
  std::string out;
  png_set_write_fn(
      png, &out,
      [](png_structp p, png_bytep data, png_size_t n) {
        static_cast<std::string*>(png_get_io_ptr(p))->append(reinterpret_cast<char*>(data), n);
      },
      nullptr);
  png_set_IHDR(png, info, width, height, depth,
               channels == 1 ? PNG_COLOR_TYPE_GRAY : PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  if (gamma != 0) png_set_gAMA(png, info, gamma);
  png_write_info(png, info);
  const int bytes = depth / 8;
  std::vector<uint8_t> row(width * channels * bytes);
  for (int y = 0; y < height; ++y) {
    for (int i = 0; i < width * channels; ++i) {
      const uint8_t v = pixels[y * width * channels + i];
      for (int b = 0; b < bytes; ++b) row[i * bytes + b] = v;  // Big-endian v x 257.
    }
    png_write_row(png, row.data());
  }
  png_write_end(png, info);
  png_destroy_write_struct(&png, &info);
  return out;
}

TEST(ImageDecodeTest, SixteenBitPngsDecodeAsTheirEightBitTwins) {
  // Every 8-bit value, gray and RGB: a 16-bit sample of v x 257 is v, as PIL has it (libpng took
  // 16-bit samples with no gAMA for linear and made them brighter).
  for (const int channels : {1, 3}) {
    std::vector<uint8_t> pixels(16 * 16 * channels);
    for (size_t i = 0; i < pixels.size(); ++i) pixels[i] = static_cast<uint8_t>(i * 7 / channels);
    auto eight = DecodeImage(EncodePngOf(16, 16, channels, 8, pixels), "s/8.png");
    ASSERT_TRUE(eight.ok()) << eight.status();
    EXPECT_EQ(eight->pixels, pixels);
    auto sixteen = DecodeImage(EncodePngOf(16, 16, channels, 16, pixels), "s/16.png");
    ASSERT_TRUE(sixteen.ok()) << sixteen.status();
    EXPECT_EQ(sixteen->channels, channels);
    EXPECT_EQ(sixteen->pixels, pixels) << channels << " channels";
  }
}

TEST(ImageDecodeTest, PngGammaIsIgnoredAsPilDoes) {
  // gAMA 1.0 (linear) or 0.8, at 8 or 16 bits: the samples as they are (libpng's simplified
  // API converted them to sRGB).
  std::vector<uint8_t> pixels(16 * 4 * 3);
  for (size_t i = 0; i < pixels.size(); ++i) pixels[i] = static_cast<uint8_t>(i * 5);
  for (const int depth : {8, 16}) {
    for (const double gamma : {1.0, 0.8, 1 / 2.2}) {
      auto image = DecodeImage(EncodePngOf(16, 4, 3, depth, pixels, gamma), "s/gama.png");
      ASSERT_TRUE(image.ok()) << image.status();
      EXPECT_EQ(image->pixels, pixels) << depth << " bits, gAMA " << gamma;
    }
  }
  // A malformed file with its gAMA chunk twice: neither applies.
  std::string png = EncodePngOf(16, 4, 3, 8, pixels, 1.0);
  const size_t at = png.find("gAMA");
  ASSERT_NE(at, std::string::npos);
  const std::string chunk = png.substr(at - 4, 16);  // Length, type, 4 bytes of gamma, CRC.
  png.insert(at - 4 + 16, chunk);
  auto image = DecodeImage(png, "s/two_gama.png");
  ASSERT_TRUE(image.ok()) << image.status();
  EXPECT_EQ(image->pixels, pixels);
}

TEST(ImageDecodeTest, JpegRgbAndGray) {
  for (const int channels : {1, 3}) {
    auto image = DecodeImage(EncodeJpeg(16, 8, channels, Halves(channels)), "s/0.jpg");
    ASSERT_TRUE(image.ok()) << image.status();
    EXPECT_EQ(image->width, 16);
    EXPECT_EQ(image->height, 8);
    EXPECT_EQ(image->channels, channels);
    // Away from the edge between the halves the colours survive compression.
    const std::vector<uint8_t> want = Halves(channels);
    for (int y = 0; y < 8; ++y) {
      for (const int x : {0, 2, 13, 15}) {
        for (int c = 0; c < channels; ++c) {
          const size_t i = (y * 16 + x) * channels + c;
          EXPECT_NEAR(image->pixels[i], want[i], 12) << x << "," << y << " channel " << c;
        }
      }
    }
  }
}

TEST(ImageDecodeTest, JpegMissingOnlyItsEoiMarkerDecodes) {
  // Common in scraped data, and PIL reads them: all the pixels are there (baseline and
  // progressive, gray and RGB). "Premature end of JPEG file" failed the whole job.
  for (const bool progressive : {false, true}) {
    for (const int channels : {1, 3}) {
      const std::string jpeg = EncodeJpeg(16, 8, channels, Halves(channels), 95, progressive);
      ASSERT_EQ(jpeg.substr(jpeg.size() - 2), "\xff\xd9");
      auto whole = DecodeImage(jpeg, "s/whole.jpg");
      ASSERT_TRUE(whole.ok()) << whole.status();
      auto cut = DecodeImage(jpeg.substr(0, jpeg.size() - 2), "s/no_eoi.jpg");
      ASSERT_TRUE(cut.ok()) << cut.status() << (progressive ? " progressive" : " baseline");
      EXPECT_EQ(cut->pixels, whole->pixels);
    }
  }
  // Cut a scan short, or between a progressive JPEG's scans (before its last SOS marker): still
  // refused, as pixels (or their detail) are missing.
  for (const bool progressive : {false, true}) {
    const std::string jpeg = EncodeJpeg(16, 8, 3, Halves(3), 95, progressive);
    auto image = DecodeImage(jpeg.substr(0, jpeg.size() - 40), "s/short.jpg");
    EXPECT_EQ(image.status().code(), absl::StatusCode::kInvalidArgument) << progressive;
    EXPECT_THAT(image.status().message(), HasSubstr("s/short.jpg"));
  }
  const std::string progressive = EncodeJpeg(16, 8, 3, Halves(3), 95, true);
  const size_t last_scan = progressive.rfind("\xff\xda");
  ASSERT_NE(last_scan, std::string::npos);
  auto image = DecodeImage(progressive.substr(0, last_scan), "s/scans.jpg");
  EXPECT_EQ(image.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(image.status().message(), HasSubstr("before its last scan"));
}

// How a test JPEG is written: libjpeg's defaults (4:2:0 YCbCr for RGB, Huffman coding, one
// interleaved scan) unless changed here.
struct JpegForm {
  const char* name;
  int channels = 3;
  bool arithmetic = false;
  bool progressive = false;  // libjpeg's simple progression.
  int restart_interval = 0;  // MCUs between restart markers.
  // A sequential script: each scan's component indexes (empty: one interleaved scan).
  std::vector<std::vector<int>> scans;
};

std::vector<JpegForm> JpegForms() {
  return {
      {.name = "baseline gray", .channels = 1},
      {.name = "baseline"},
      {.name = "baseline restarts", .restart_interval = 1},
      {.name = "progressive gray", .channels = 1, .progressive = true},
      {.name = "progressive", .progressive = true},
      {.name = "progressive restarts", .progressive = true, .restart_interval = 2},
      {.name = "non-interleaved", .scans = {{0}, {1}, {2}}},
      {.name = "Y then CbCr", .scans = {{0}, {1, 2}}},
      {.name = "arithmetic gray", .channels = 1, .arithmetic = true},
      {.name = "arithmetic", .arithmetic = true},
      {.name = "arithmetic progressive", .arithmetic = true, .progressive = true},
      {.name = "arithmetic non-interleaved", .arithmetic = true, .scans = {{0}, {1}, {2}}},
  };
}

// A 45x37 image with detail in every block (so every scan has data), channels 1 or 3.
std::vector<uint8_t> Texture(int channels) {
  std::vector<uint8_t> p;
  for (int y = 0; y < 37; ++y) {
    for (int x = 0; x < 45; ++x) {
      for (int c = 0; c < channels; ++c) {
        p.push_back(static_cast<uint8_t>(x * 7 + y * 13 + c * 50 + (x * y + c) % 17 * 9));
      }
    }
  }
  return p;
}

// Texture(form.channels) as a JPEG of `form`, written by libjpeg (which exits on its errors: fine
// for a test's own encoder).
std::string EncodeJpegAs(const JpegForm& form) {
  const std::vector<uint8_t> pixels = Texture(form.channels);
  jpeg_compress_struct cinfo;
  jpeg_error_mgr errors;
  cinfo.err = jpeg_std_error(&errors);
  jpeg_create_compress(&cinfo);
  unsigned char* buffer = nullptr;
  unsigned long size = 0;
  jpeg_mem_dest(&cinfo, &buffer, &size);
  cinfo.image_width = 45;
  cinfo.image_height = 37;
  cinfo.input_components = form.channels;
  cinfo.in_color_space = form.channels == 1 ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_set_defaults(&cinfo);
  jpeg_set_quality(&cinfo, 90, TRUE);
  cinfo.arith_code = form.arithmetic;
  cinfo.restart_interval = form.restart_interval;
  if (form.progressive) jpeg_simple_progression(&cinfo);
  std::vector<jpeg_scan_info> scans;
  for (const std::vector<int>& components : form.scans) {
    jpeg_scan_info scan{};
    scan.comps_in_scan = static_cast<int>(components.size());
    for (size_t i = 0; i < components.size(); ++i) scan.component_index[i] = components[i];
    scan.Se = DCTSIZE2 - 1;
    scans.push_back(scan);
  }
  if (!scans.empty()) {
    cinfo.scan_info = scans.data();
    cinfo.num_scans = static_cast<int>(scans.size());
  }
  jpeg_start_compress(&cinfo, TRUE);
  while (cinfo.next_scanline < cinfo.image_height) {
    JSAMPROW row =
        const_cast<unsigned char*>(pixels.data() + cinfo.next_scanline * 45 * form.channels);
    jpeg_write_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_compress(&cinfo);
  std::string out(reinterpret_cast<const char*>(buffer), size);
  jpeg_destroy_compress(&cinfo);
  std::free(buffer);
  return out;
}

// Where each SOS marker (a scan's header) starts.
std::vector<size_t> ScanStarts(const std::string& jpeg) {
  std::vector<size_t> starts;
  for (size_t at = jpeg.find("\xff\xda"); at != std::string::npos;
       at = jpeg.find("\xff\xda", at + 2)) {
    starts.push_back(at);
  }
  return starts;
}

// Where the entropy-coded data of the scan whose SOS marker starts at `sos` ends: at the next
// marker but a restart marker.
size_t ScanDataEnd(const std::string& jpeg, size_t sos) {
  size_t at =
      sos + 2 + (static_cast<uint8_t>(jpeg[sos + 2]) << 8) + static_cast<uint8_t>(jpeg[sos + 3]);
  for (; at + 1 < jpeg.size(); ++at) {
    const uint8_t next = jpeg[at + 1];
    if (static_cast<uint8_t>(jpeg[at]) == 0xff && next != 0 && (next < 0xd0 || next > 0xd7)) break;
  }
  return at;
}

TEST(ImageDecodeTest, TruncatedJpegsDecodeOnlyWhenNothingButTheEoiIsMissing) {
  // Cut at every length, each form (Huffman and arithmetic; one interleaved scan, progressive
  // and non-interleaved sequential scans; with restart markers): a cut file is refused, or it
  // decodes to the whole file's pixels (one missing only its EOI marker, or a part of it, does
  // where Huffman-coded). 93b1d26 decoded cuts between sequential scans, and of arithmetic-coded
  // data, with components or blocks left zero.
  for (const JpegForm& form : JpegForms()) {
    const std::string jpeg = EncodeJpegAs(form);
    ASSERT_EQ(jpeg.substr(jpeg.size() - 2), "\xff\xd9") << form.name;
    if (!form.progressive) {
      ASSERT_EQ(ScanStarts(jpeg).size(), form.scans.empty() ? 1 : form.scans.size()) << form.name;
    }
    auto whole = DecodeImage(jpeg, "s/whole.jpg");
    ASSERT_TRUE(whole.ok()) << whole.status() << " " << form.name;
    std::vector<size_t> wrong;  // Cut lengths that decoded to other pixels.
    std::vector<size_t> accepted;
    for (size_t n = 2; n < jpeg.size(); ++n) {
      auto cut = DecodeImage(jpeg.substr(0, n), "s/cut.jpg");
      if (cut.ok()) {
        accepted.push_back(n);
        if (cut->pixels != whole->pixels) wrong.push_back(n);
      } else {
        EXPECT_EQ(cut.status().code(), absl::StatusCode::kInvalidArgument);
        EXPECT_THAT(cut.status().message(), HasSubstr("s/cut.jpg"));
      }
    }
    EXPECT_THAT(wrong, IsEmpty()) << form.name << " of " << jpeg.size() << " bytes";
    if (form.arithmetic) {
      EXPECT_THAT(accepted, IsEmpty()) << form.name << " of " << jpeg.size() << " bytes";
    } else {
      EXPECT_THAT(accepted, ::testing::Contains(jpeg.size() - 2)) << form.name;
    }
  }
}

TEST(ImageDecodeTest, TruncatedJpegsAreRefusedNamingTheCut) {
  const auto refused = [](const std::string& bytes, const char* why) {
    auto image = DecodeImage(bytes, "s/cut.jpg");
    EXPECT_EQ(image.status().code(), absl::StatusCode::kInvalidArgument) << why;
    const std::string message(image.status().message());
    EXPECT_THAT(message, HasSubstr("s/cut.jpg"));
    EXPECT_THAT(message, HasSubstr(why));
  };
  // A baseline JPEG cut inside its (one) scan's entropy data.
  const std::string baseline = EncodeJpegAs({.name = "baseline"});
  const size_t sos = ScanStarts(baseline).at(0);
  refused(baseline.substr(0, (sos + ScanDataEnd(baseline, sos)) / 2), "inside a scan");
  // A progressive one cut between scans, and inside one half way.
  const std::string progressive = EncodeJpegAs({.name = "progressive", .progressive = true});
  const std::vector<size_t> scans = ScanStarts(progressive);
  ASSERT_GE(scans.size(), 4u);
  refused(progressive.substr(0, scans[scans.size() / 2]), "before its last scan");
  refused(progressive.substr(0, (scans[1] + ScanDataEnd(progressive, scans[1])) / 2),
          "inside a scan");
  // A sequential one of a scan per component cut between its scans, or inside a scan's header (the
  // decoder's complaint about what it read past the end, named as a truncation).
  const std::string sequential =
      EncodeJpegAs({.name = "non-interleaved", .scans = {{0}, {1}, {2}}});
  const std::vector<size_t> sequential_scans = ScanStarts(sequential);
  ASSERT_EQ(sequential_scans.size(), 3u);
  for (const size_t scan : {sequential_scans[1], sequential_scans[2]}) {
    refused(sequential.substr(0, scan), "before its last scan");
    refused(sequential.substr(0, scan + 6), "truncated file");
  }
  // Arithmetic-coded, one scan or progressive: cut before the end of its data, or missing only
  // the EOI marker (arithmetic decoding reads zeros past the data's end without a word, so a
  // whole scan can't be told from a cut one).
  for (const bool progressive : {false, true}) {
    const std::string arithmetic =
        EncodeJpegAs({.name = "arithmetic", .arithmetic = true, .progressive = progressive});
    refused(arithmetic.substr(0, arithmetic.size() - 12), "arithmetic-coded");
    refused(arithmetic.substr(0, arithmetic.size() - 2), "arithmetic-coded");
  }
}

TEST(ImageDecodeTest, RefusesUnknownCorruptAndTruncatedFiles) {
  auto image = DecodeImage("GIF89a....", "shard-003.tar:0001.gif");
  EXPECT_EQ(image.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(image.status().message(), HasSubstr("shard-003.tar:0001.gif"));
  EXPECT_THAT(image.status().message(), HasSubstr("not a PNG or JPEG"));

  const std::string png = EncodePng(16, 8, 3, Halves(3));
  image = DecodeImage(png.substr(0, png.size() / 2), "cut.png");
  EXPECT_EQ(image.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(image.status().message(), HasSubstr("cut.png"));

  const std::string jpeg = EncodeJpeg(16, 8, 3, Halves(3));
  image = DecodeImage(jpeg.substr(0, jpeg.size() / 2), "cut.jpg");
  EXPECT_EQ(image.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(image.status().message(), HasSubstr("cut.jpg"));
  image = DecodeImage(jpeg.substr(0, 40), "header.jpg");
  EXPECT_EQ(image.status().code(), absl::StatusCode::kInvalidArgument);

  std::string garbage = jpeg;
  for (size_t i = 200; i < garbage.size() - 2; ++i) garbage[i] = static_cast<char>(i * 31);
  image = DecodeImage(garbage, "garbage.jpg");
  EXPECT_EQ(image.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace mimo::data
