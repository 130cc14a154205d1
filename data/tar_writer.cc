// TarWriter: each member a header block (after a GNU 'L' member for a long name), its data and
// zero padding to the block size, through stdio.
#include "data/tar_writer.h"

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace mimo::data {
namespace {

constexpr char kZeroBlock[kTarBlockSize] = {};

// `value` as `width - 1` zero-padded octal digits and a NUL; false when it does not fit.
bool PutOctal(char* field, int width, int64_t value) {
  if (value < 0) return false;
  char digits[24];
  const int n = std::snprintf(digits, sizeof(digits), "%0*llo", width - 1,
                              static_cast<unsigned long long>(value));
  if (n != width - 1) return false;
  std::memcpy(field, digits, static_cast<size_t>(width));  // With the NUL.
  return true;
}

absl::Status PutString(char* field, size_t width, const std::string& value, const char* what) {
  if (value.size() > width) {
    return absl::InvalidArgumentError(absl::StrCat("tar header: the ", what, " \"", value,
                                                   "\" is longer than ", width, " bytes"));
  }
  std::memcpy(field, value.data(), value.size());
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::string> TarHeaderBlock(const TarHeader& header) {
  std::string block(kTarBlockSize, '\0');
  char* h = block.data();
  MIMO_RETURN_IF_ERROR(PutString(h, 100, header.name, "name"));
  MIMO_RETURN_IF_ERROR(PutString(h + 345, 155, header.prefix, "prefix"));
  MIMO_RETURN_IF_ERROR(PutString(h + 265, 32, header.uname, "user name"));
  MIMO_RETURN_IF_ERROR(PutString(h + 297, 32, header.gname, "group name"));
  const auto numeric = [&](const char* what, int offset, int width, int64_t value) {
    return PutOctal(h + offset, width, value) ? absl::OkStatus()
                                              : absl::InvalidArgumentError(absl::StrCat(
                                                    "tar header of \"", header.name, "\": the ",
                                                    what, " ", value, " does not fit"));
  };
  MIMO_RETURN_IF_ERROR(numeric("mode", 100, 8, header.mode));
  MIMO_RETURN_IF_ERROR(numeric("uid", 108, 8, header.uid));
  MIMO_RETURN_IF_ERROR(numeric("gid", 116, 8, header.gid));
  MIMO_RETURN_IF_ERROR(numeric("mtime", 136, 12, header.mtime));
  if (header.size < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("tar header of \"", header.name, "\": negative size ", header.size));
  }
  if (header.base256_size || !PutOctal(h + 124, 12, header.size)) {
    // GNU base-256: 0x80, then the value big-endian in the field's other 11 bytes.
    std::memset(h + 124, 0, 12);
    h[124] = static_cast<char>(0x80);
    for (int i = 0; i < 8; ++i) h[135 - i] = static_cast<char>((header.size >> (8 * i)) & 0xff);
  }
  h[156] = header.type;
  std::memcpy(h + 257,
              "ustar\0"
              "00",
              8);
  // The checksum: the sum of the header's bytes (unsigned) with its own field as spaces, written
  // as six octal digits, a NUL and a space.
  std::memset(h + kTarChecksumOffset, ' ', kTarChecksumWidth);
  unsigned sum = 0;
  for (const char c : block) sum += static_cast<unsigned char>(c);
  std::snprintf(h + kTarChecksumOffset, kTarChecksumWidth, "%06o", sum);
  h[kTarChecksumOffset + 7] = ' ';
  return block;
}

absl::StatusOr<std::unique_ptr<TarWriter>> TarWriter::Create(const std::string& path,
                                                             const TarWriterOptions& options) {
  std::FILE* file = std::fopen(path.c_str(), "wb");
  if (file == nullptr) return absl::ErrnoToStatus(errno, absl::StrCat("cannot create ", path));
  return std::unique_ptr<TarWriter>(new TarWriter(path, file, options));
}

TarWriter::~TarWriter() {
  if (file_ != nullptr) std::fclose(file_);
}

absl::Status TarWriter::Write(absl::string_view bytes) {
  if (!bytes.empty() && std::fwrite(bytes.data(), 1, bytes.size(), file_) != bytes.size()) {
    return absl::ErrnoToStatus(errno, absl::StrCat("cannot write ", path_));
  }
  return absl::OkStatus();
}

absl::Status TarWriter::WriteMember(const TarHeader& header, absl::string_view data) {
  absl::StatusOr<std::string> block = TarHeaderBlock(header);
  if (!block.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(path_, ": ", block.status().message()));
  }
  MIMO_RETURN_IF_ERROR(Write(*block));
  MIMO_RETURN_IF_ERROR(Write(data));
  return Write(absl::string_view(kZeroBlock, TarPadding(static_cast<int64_t>(data.size()))));
}

absl::Status TarWriter::AddFile(absl::string_view name, absl::string_view data) {
  if (file_ == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(path_, ": AddFile after Close"));
  }
  if (name.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(path_, ": a member needs a name"));
  }
  TarHeader header{.size = static_cast<int64_t>(data.size()),
                   .type = '0',
                   .mode = options_.mode,
                   .mtime = options_.mtime};
  if (name.size() > 100) {
    // GNU tar's convention: the name (with a NUL) as the data of a member "././@LongLink" of type
    // 'L', which names the member after it.
    TarHeader link{.name = "././@LongLink",
                   .size = static_cast<int64_t>(name.size() + 1),
                   .type = 'L',
                   .mode = options_.mode,
                   .mtime = options_.mtime};
    MIMO_RETURN_IF_ERROR(WriteMember(link, absl::StrCat(name, std::string(1, '\0'))));
    name = name.substr(0, 100);
  }
  header.name = std::string(name);
  return WriteMember(header, data);
}

absl::Status TarWriter::Close() {
  if (file_ == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(path_, ": closed twice"));
  }
  absl::Status status = Write(absl::string_view(kZeroBlock, kTarBlockSize));
  if (status.ok()) status = Write(absl::string_view(kZeroBlock, kTarBlockSize));
  if (std::fflush(file_) != 0 && status.ok()) {
    status = absl::ErrnoToStatus(errno, absl::StrCat("cannot write ", path_));
  }
  if (std::fclose(file_) != 0 && status.ok()) {
    status = absl::ErrnoToStatus(errno, absl::StrCat("cannot close ", path_));
  }
  file_ = nullptr;
  return status;
}

}  // namespace mimo::data
