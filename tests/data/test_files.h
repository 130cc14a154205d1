// Files the data tests write themselves: temporary folders, tar archives (ustar, GNU long
// names, pax paths), PNG and JPEG images of known pixels, and .npy arrays.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/tar_writer.h"  // kTarChecksumOffset, for tests that corrupt a header.

namespace mimo::data::testing {

// A fresh folder under $TMPDIR (or /tmp), removed with its contents on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

void WriteFile(const std::string& path, const std::string& bytes);
std::string ReadFile(const std::string& path);
// `n` bytes of a pattern that varies with `seed` (data no two members share by chance).
std::string PatternBytes(size_t n, char seed);

// Builds a tar archive in memory, member by member.
class TarBuilder {
 public:
  enum class NameStyle {
    kPlain,    // In the header's name field (up to 100 bytes).
    kUstar,    // Split into the ustar prefix and name fields at a '/'.
    kGnuLong,  // A GNU 'L' member with the name, then the header with it cut to 99 bytes.
    kPaxPath,  // A pax 'x' member with `path=`, then the header with a placeholder name.
  };

  // A regular file (type '0').
  TarBuilder& File(const std::string& name, const std::string& data,
                   NameStyle style = NameStyle::kPlain);
  // A member of any type with no data (directories '5', symlinks '2', ...).
  TarBuilder& Special(const std::string& name, char type);
  // A hard link ('1') or symlink ('2') to `target`, in the header's link name field (up to 100
  // bytes), or in a GNU 'K' member before it when `gnu_long_target`.
  TarBuilder& Link(const std::string& name, char type, const std::string& target,
                   bool gnu_long_target = false);
  // A regular file whose size field is written in GNU base-256.
  TarBuilder& Base256File(const std::string& name, const std::string& data);
  // The archive: the members and two zero blocks.
  std::string Finish() const;

 private:
  void Header(const std::string& name, const std::string& prefix, int64_t size, char type,
              bool base256 = false);
  void Data(const std::string& data);

  std::string out_;
};

// 8-bit images, pixels (height, width, channels) with channels 1 (gray), 3 (RGB) or 4 (RGBA).
std::string EncodePng(int width, int height, int channels, const std::vector<uint8_t>& pixels);
// channels 1 or 3; quality 1..100; progressive: libjpeg's simple progression of scans.
std::string EncodeJpeg(int width, int height, int channels, const std::vector<uint8_t>& pixels,
                       int quality = 95, bool progressive = false);

// A .npy file: dtype "<f4" or "<f2" (values converted; pick ones float16 holds exactly),
// `header_dict` replaces the generated dict when not empty; version 1 or 2.
std::string MakeNpy(const std::vector<int64_t>& shape, const std::vector<float>& values,
                    const std::string& dtype = "<f4", int version = 1,
                    const std::string& header_dict = "");

}  // namespace mimo::data::testing
