// TarWriter: a tar archive written to a file member by member (ustar headers, GNU long names),
// as TarReader, `tar` and Python's tarfile read it; TarHeaderBlock, one header, for writers of
// their own.
#pragma once

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace mimo::data {

inline constexpr int64_t kTarBlockSize = 512;
// Offset and width of the checksum field in a header block.
inline constexpr int kTarChecksumOffset = 148;
inline constexpr int kTarChecksumWidth = 8;

struct TarHeader {
  std::string name;    // At most 100 bytes.
  std::string prefix;  // The ustar prefix (the path before `name`), at most 155 bytes.
  int64_t size = 0;    // >= 0.
  char type = '0';     // '0' regular file, '5' directory, 'L' GNU long name, 'x' pax, ...
  int64_t mode = 0644;
  int64_t uid = 0, gid = 0;
  std::string uname, gname;  // At most 32 bytes each.
  int64_t mtime = 0;         // Seconds since the epoch, >= 0.
  // The size in GNU base-256 (leading byte 0x80) rather than octal; sizes from 8 GiB on, which
  // 11 octal digits cannot hold, always are.
  bool base256_size = false;
};

// The 512-byte ustar header block of `header` ("ustar\0" "00"), its checksum set. InvalidArgument
// for a field too long or a negative number.
absl::StatusOr<std::string> TarHeaderBlock(const TarHeader& header);

// Zero bytes that pad `size` data bytes to a whole number of blocks.
inline int64_t TarPadding(int64_t size) {
  return (kTarBlockSize - size % kTarBlockSize) % kTarBlockSize;
}

struct TarWriterOptions {
  int64_t mtime = 0;  // Of every member: a fixed time makes the archive reproducible.
  int64_t mode = 0644;
};

// Writes regular files in the order given. A name longer than 100 bytes is stored as a GNU 'L'
// member holding it, then the header with its first 100 bytes. Close writes the end of the
// archive (two zero blocks); an archive destroyed without Close is left incomplete (TarReader
// refuses it). Errors are the OS error's status, naming the file. Not thread-safe.
class TarWriter {
 public:
  // Creates (or truncates) `path`.
  static absl::StatusOr<std::unique_ptr<TarWriter>> Create(const std::string& path,
                                                           const TarWriterOptions& options = {});
  ~TarWriter();
  TarWriter(const TarWriter&) = delete;
  TarWriter& operator=(const TarWriter&) = delete;

  const std::string& path() const { return path_; }

  // A regular file `name` (not empty) holding `data`. FailedPrecondition after Close.
  absl::Status AddFile(absl::string_view name, absl::string_view data);
  // The end-of-archive blocks, flushed and the file closed. FailedPrecondition when called twice.
  absl::Status Close();

 private:
  TarWriter(std::string path, std::FILE* file, const TarWriterOptions& options)
      : path_(std::move(path)), file_(file), options_(options) {}
  absl::Status Write(absl::string_view bytes);
  absl::Status WriteMember(const TarHeader& header, absl::string_view data);

  std::string path_;
  std::FILE* file_ = nullptr;
  TarWriterOptions options_;
};

}  // namespace mimo::data
