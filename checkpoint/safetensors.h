// The safetensors file format (Hugging Face's): an 8-byte little-endian header length, a JSON
// header naming each tensor's dtype, shape and byte range, then the tensors' bytes. A hardened
// parser (every header check below) and a streaming reader and writer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace mimo::checkpoint {

// The header is at most this many bytes (Hugging Face's reader refuses more than 100 MB too).
inline constexpr uint64_t kMaxHeaderBytes = 100'000'000;

// A tensor's entry: dtype as safetensors names it ("F32", "BF16", "I64", ...), shape, and its
// bytes [begin, end) counted from the end of the header.
struct TensorEntry {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0;
  uint64_t end = 0;

  bool operator==(const TensorEntry&) const = default;
};

struct SafetensorsHeader {
  std::vector<TensorEntry> tensors;             // In byte order.
  std::map<std::string, std::string> metadata;  // "__metadata__": string values only.
  uint64_t data_offset = 0;  // Where the tensors' bytes start in the file: 8 + header length.

  // The entry named `name`, or null.
  const TensorEntry* Find(absl::string_view name) const;
};

// Bytes per element of a safetensors dtype name; 0 for a name it does not know.
size_t DTypeBytes(absl::string_view dtype);

// Parses the header at the start of a file of `file_size` bytes; `prefix` holds at least the
// first 8 bytes and, when the header length they give is in range, the header itself
// (8 + length bytes). InvalidArgument (DataLoss for a file too short for what the header says)
// naming what is wrong: a length beyond kMaxHeaderBytes or the file, a header that is not a JSON
// object of objects, a key given twice in any object, an unknown dtype, a negative or overflowing
// shape, data_offsets that are not two nondecreasing integers, a byte length other than dtype size
// x elements, tensors that overlap or leave holes (the bytes after the header must be exactly the
// tensors', back to back), or "__metadata__" that is not an object of strings.
absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(absl::string_view prefix,
                                                         uint64_t file_size);

// A safetensors file open for reading: the header parsed at Open, each tensor's bytes read on
// demand (pread), so a file is never in memory whole.
class SafetensorsReader {
 public:
  static absl::StatusOr<SafetensorsReader> Open(const std::string& path);
  SafetensorsReader(SafetensorsReader&& other) noexcept;
  SafetensorsReader& operator=(SafetensorsReader&& other) noexcept;
  SafetensorsReader(const SafetensorsReader&) = delete;
  SafetensorsReader& operator=(const SafetensorsReader&) = delete;
  ~SafetensorsReader();

  const SafetensorsHeader& header() const { return header_; }
  const std::string& path() const { return path_; }
  // The bytes of `name` into `out` (exactly its byte length). NotFound for a name the file does
  // not have, InvalidArgument for a span of another size, DataLoss when the file is shorter.
  absl::Status Read(absl::string_view name, absl::Span<char> out) const;
  // `n` bytes of `name` from byte `offset` of it (a slice of a large tensor).
  absl::Status ReadRange(absl::string_view name, uint64_t offset, absl::Span<char> out) const;

 private:
  SafetensorsReader(std::string path, int fd, SafetensorsHeader header)
      : path_(std::move(path)), fd_(fd), header_(std::move(header)) {}
  std::string path_;
  int fd_ = -1;
  SafetensorsHeader header_;
};

// A tensor to write: its bytes (dtype size x elements of them) stay the caller's.
struct TensorToWrite {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  const void* data = nullptr;
};

// A file's size and CRC-32C (common/crc32c.h), as a checkpoint's metadata records them.
struct FileDigest {
  uint64_t bytes = 0;
  uint32_t crc32c = 0;

  bool operator==(const FileDigest&) const = default;
};

// Writes `tensors` (in this order) and `metadata` to `path` (created or truncated), then fsyncs
// it; returns the digest of what it wrote. InvalidArgument, before anything is written, for an
// empty or duplicate name, the name "__metadata__", an unknown dtype or a negative shape; the
// OS error otherwise.
absl::StatusOr<FileDigest> WriteSafetensors(
    const std::string& path, absl::Span<const TensorToWrite> tensors,
    const std::map<std::string, std::string>& metadata = {});

// A safetensors file written tensor by tensor, so that a caller streaming whole tensors (an
// export assembling one parameter at a time) never holds them all: Create writes the header from
// the tensors' names, dtypes and shapes (their data is not read); Append takes their bytes in
// order, in pieces of any size; Finish checks that all came, fsyncs and returns the digest.
// InvalidArgument for bad tensors as WriteSafetensors, or more bytes than they hold;
// FailedPrecondition from Finish when bytes are missing (the file is then incomplete).
class SafetensorsStreamWriter {
 public:
  static absl::StatusOr<SafetensorsStreamWriter> Create(
      const std::string& path, absl::Span<const TensorToWrite> tensors,
      const std::map<std::string, std::string>& metadata = {});
  SafetensorsStreamWriter(SafetensorsStreamWriter&& other) noexcept;
  SafetensorsStreamWriter& operator=(SafetensorsStreamWriter&&) = delete;
  SafetensorsStreamWriter(const SafetensorsStreamWriter&) = delete;
  ~SafetensorsStreamWriter();

  absl::Status Append(absl::Span<const char> bytes);
  absl::StatusOr<FileDigest> Finish();

 private:
  SafetensorsStreamWriter(std::string path, int fd, uint64_t remaining)
      : path_(std::move(path)), fd_(fd), remaining_(remaining) {}
  std::string path_;
  int fd_ = -1;
  uint64_t remaining_ = 0;  // Tensor bytes still to come.
  FileDigest digest_;
};

// The digest of the file at `path`, read in pieces (never whole in memory).
absl::StatusOr<FileDigest> DigestOf(const std::string& path);

}  // namespace mimo::checkpoint
