// Safetensors: the header's checks, pread-based reading, and write + fsync.
#include "checkpoint/safetensors.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/crc32c.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace mimo::checkpoint {
namespace {

using Json = nlohmann::json;

absl::Status OsError(absl::string_view what, const std::string& path) {
  return absl::ErrnoToStatus(errno, absl::StrCat(what, " ", path));
}

uint64_t LittleEndian64(const char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}

absl::Status Bad(absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("safetensors header: ", what));
}

// A JSON number that is a non-negative integer, as uint64.
bool AsCount(const Json& j, uint64_t& out) {
  if (j.is_number_unsigned()) {
    out = j.get<uint64_t>();
    return true;
  }
  if (j.is_number_integer() && j.get<int64_t>() >= 0) {
    out = static_cast<uint64_t>(j.get<int64_t>());
    return true;
  }
  return false;
}

// All of `n` bytes at `offset` of `fd`, or DataLoss when the file ends first.
absl::Status PreadAll(int fd, char* out, size_t n, uint64_t offset, const std::string& path) {
  while (n > 0) {
    const ssize_t got = ::pread(fd, out, n, static_cast<off_t>(offset));
    if (got < 0) {
      if (errno == EINTR) continue;
      return OsError("cannot read", path);
    }
    if (got == 0) {
      return absl::DataLossError(absl::StrCat(path, " ends before byte ", offset + n));
    }
    out += got;
    n -= static_cast<size_t>(got);
    offset += static_cast<uint64_t>(got);
  }
  return absl::OkStatus();
}

absl::Status WriteAll(int fd, const char* data, size_t n, const std::string& path,
                      FileDigest& digest) {
  digest.bytes += n;
  digest.crc32c = Crc32cExtend(digest.crc32c, data, n);
  while (n > 0) {
    const ssize_t put = ::write(fd, data, n);
    if (put < 0) {
      if (errno == EINTR) continue;
      return OsError("cannot write", path);
    }
    data += put;
    n -= static_cast<size_t>(put);
  }
  return absl::OkStatus();
}

}  // namespace

size_t DTypeBytes(absl::string_view dtype) {
  static const std::map<std::string, size_t, std::less<>> kSizes = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E4M3", 1}, {"F8_E5M2", 1},
      {"I16", 2},  {"U16", 2}, {"F16", 2}, {"BF16", 2},    {"I32", 4},
      {"U32", 4},  {"F32", 4}, {"I64", 8}, {"U64", 8},     {"F64", 8}};
  const auto it = kSizes.find(dtype);
  return it == kSizes.end() ? 0 : it->second;
}

const TensorEntry* SafetensorsHeader::Find(absl::string_view name) const {
  for (const TensorEntry& t : tensors) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(absl::string_view prefix,
                                                         uint64_t file_size) {
  if (prefix.size() < 8 || file_size < 8) {
    return absl::DataLossError("safetensors: shorter than the 8-byte header length");
  }
  const uint64_t length = LittleEndian64(prefix.data());
  if (length > kMaxHeaderBytes) {
    return Bad(absl::StrCat("length ", length, " exceeds the limit of ", kMaxHeaderBytes));
  }
  if (length > file_size - 8) {
    return absl::DataLossError(
        absl::StrCat("safetensors: a header of ", length, " bytes in a file of ", file_size));
  }
  if (prefix.size() < 8 + length) {
    return absl::InvalidArgumentError(absl::StrCat(
        "safetensors: ", prefix.size(), " bytes given of an ", 8 + length, "-byte header"));
  }
  // A key repeated in any object is an error (a JSON parser would keep the last one silently).
  std::vector<std::set<std::string>> keys;  // Of each object being parsed, innermost last.
  std::string duplicate;
  const Json::parser_callback_t unique = [&](int, Json::parse_event_t event, Json& parsed) {
    if (event == Json::parse_event_t::object_start) {
      keys.emplace_back();
    } else if (event == Json::parse_event_t::object_end && !keys.empty()) {
      keys.pop_back();
    } else if (event == Json::parse_event_t::key && parsed.is_string() && !keys.empty() &&
               !keys.back().insert(parsed.get<std::string>()).second && duplicate.empty()) {
      duplicate = parsed.get<std::string>();
    }
    return true;
  };
  const Json header = Json::parse(prefix.substr(8, length), unique, /*allow_exceptions=*/false);
  if (header.is_discarded()) return Bad("not valid JSON");
  if (!header.is_object()) return Bad("not a JSON object");
  if (!duplicate.empty()) return Bad(absl::StrCat("key \"", duplicate, "\" given twice"));
  SafetensorsHeader out;
  out.data_offset = 8 + length;
  const uint64_t data_bytes = file_size - out.data_offset;
  for (const auto& [name, value] : header.items()) {
    if (name == "__metadata__") {
      if (!value.is_object()) return Bad("__metadata__ is not an object");
      for (const auto& [key, v] : value.items()) {
        if (!v.is_string()) return Bad(absl::StrCat("__metadata__ \"", key, "\" is not a string"));
        out.metadata[key] = v.get<std::string>();
      }
      continue;
    }
    const std::string at = absl::StrCat("tensor \"", name, "\"");
    if (name.empty()) return Bad("a tensor with an empty name");
    if (!value.is_object()) return Bad(absl::StrCat(at, " is not an object"));
    TensorEntry t{.name = name};
    const auto dtype = value.find("dtype");
    if (dtype == value.end() || !dtype->is_string() || DTypeBytes(dtype->get<std::string>()) == 0) {
      return Bad(absl::StrCat(at, ": dtype missing or not one safetensors knows"));
    }
    t.dtype = dtype->get<std::string>();
    const auto shape = value.find("shape");
    if (shape == value.end() || !shape->is_array()) {
      return Bad(absl::StrCat(at, ": shape missing or not an array"));
    }
    uint64_t elements = 1;
    for (const Json& d : *shape) {
      uint64_t size = 0;
      if (!AsCount(d, size) || size > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return Bad(absl::StrCat(at, ": a shape entry that is not a non-negative integer"));
      }
      if (size != 0 && elements > std::numeric_limits<uint64_t>::max() / size) {
        return Bad(absl::StrCat(at, ": its element count overflows"));
      }
      elements *= size;
      t.shape.push_back(static_cast<int64_t>(size));
    }
    const auto offsets = value.find("data_offsets");
    if (offsets == value.end() || !offsets->is_array() || offsets->size() != 2 ||
        !AsCount((*offsets)[0], t.begin) || !AsCount((*offsets)[1], t.end) || t.end < t.begin) {
      return Bad(absl::StrCat(at, ": data_offsets must be [begin, end] with begin <= end"));
    }
    const uint64_t bytes = DTypeBytes(t.dtype);
    if (elements > std::numeric_limits<uint64_t>::max() / bytes ||
        t.end - t.begin != elements * bytes) {
      return Bad(absl::StrCat(at, ": ", t.end - t.begin, " bytes for ", elements, " elements of ",
                              t.dtype));
    }
    if (t.end > data_bytes) {
      return absl::DataLossError(absl::StrCat("safetensors: ", at, " ends at byte ", t.end, " of ",
                                              data_bytes, " after the header"));
    }
    if (value.size() != 3)
      return Bad(absl::StrCat(at, ": fields other than dtype, shape, data_offsets"));
    out.tensors.push_back(std::move(t));
  }
  // Back to back from byte 0 to the end of the file: no overlaps, no holes.
  std::sort(out.tensors.begin(), out.tensors.end(), [](const TensorEntry& a, const TensorEntry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t next = 0;
  for (const TensorEntry& t : out.tensors) {
    if (t.begin != next) {
      return Bad(absl::StrCat("tensor \"", t.name, "\" starts at byte ", t.begin, " where ",
                              t.begin < next ? "another tensor's bytes are" : "a hole begins at ",
                              t.begin < next ? "" : absl::StrCat(next)));
    }
    next = t.end;
  }
  if (next != data_bytes) {
    return Bad(absl::StrCat("the tensors hold ", next, " bytes, the file ", data_bytes,
                            " after the header"));
  }
  return out;
}

absl::StatusOr<SafetensorsReader> SafetensorsReader::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return OsError("cannot open", path);
  SafetensorsReader reader(path, fd, {});  // Closes fd on every return below.
  const off_t size = ::lseek(fd, 0, SEEK_END);
  if (size < 0) return OsError("cannot size", path);
  std::string prefix(std::min<uint64_t>(8, static_cast<uint64_t>(size)), '\0');
  MIMO_RETURN_IF_ERROR(PreadAll(fd, prefix.data(), prefix.size(), 0, path));
  if (prefix.size() == 8) {
    const uint64_t length = LittleEndian64(prefix.data());
    if (length <= kMaxHeaderBytes && length <= static_cast<uint64_t>(size) - 8) {
      prefix.resize(8 + length);
      MIMO_RETURN_IF_ERROR(PreadAll(fd, prefix.data() + 8, length, 8, path));
    }
  }
  absl::StatusOr<SafetensorsHeader> header =
      ParseSafetensorsHeader(prefix, static_cast<uint64_t>(size));
  if (!header.ok()) {
    return absl::Status(header.status().code(),
                        absl::StrCat(path, ": ", header.status().message()));
  }
  reader.header_ = *std::move(header);
  return reader;
}

SafetensorsReader::SafetensorsReader(SafetensorsReader&& other) noexcept
    : path_(std::move(other.path_)),
      fd_(std::exchange(other.fd_, -1)),
      header_(std::move(other.header_)) {}

SafetensorsReader& SafetensorsReader::operator=(SafetensorsReader&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    path_ = std::move(other.path_);
    fd_ = std::exchange(other.fd_, -1);
    header_ = std::move(other.header_);
  }
  return *this;
}

SafetensorsReader::~SafetensorsReader() {
  if (fd_ >= 0) ::close(fd_);
}

absl::Status SafetensorsReader::Read(absl::string_view name, absl::Span<char> out) const {
  const TensorEntry* t = header_.Find(name);
  if (t == nullptr)
    return absl::NotFoundError(absl::StrCat(path_, " has no tensor \"", name, "\""));
  if (out.size() != t->end - t->begin) {
    return absl::InvalidArgumentError(absl::StrCat("tensor \"", name, "\" of ", path_, " has ",
                                                   t->end - t->begin, " bytes, not ", out.size()));
  }
  return ReadRange(name, 0, out);
}

absl::Status SafetensorsReader::ReadRange(absl::string_view name, uint64_t offset,
                                          absl::Span<char> out) const {
  const TensorEntry* t = header_.Find(name);
  if (t == nullptr)
    return absl::NotFoundError(absl::StrCat(path_, " has no tensor \"", name, "\""));
  if (offset > t->end - t->begin || out.size() > t->end - t->begin - offset) {
    return absl::InvalidArgumentError(absl::StrCat("bytes [", offset, ", ", offset + out.size(),
                                                   ") of tensor \"", name, "\" (",
                                                   t->end - t->begin, " bytes) in ", path_));
  }
  return PreadAll(fd_, out.data(), out.size(), header_.data_offset + t->begin + offset, path_);
}

absl::StatusOr<FileDigest> DigestOf(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return OsError("cannot open", path);
  FileDigest digest;
  std::vector<char> buffer(1 << 20);
  absl::Status status;
  while (true) {
    const ssize_t n = ::read(fd, buffer.data(), buffer.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) status = OsError("cannot read", path);
    if (n <= 0) break;
    digest.bytes += static_cast<uint64_t>(n);
    digest.crc32c = Crc32cExtend(digest.crc32c, buffer.data(), static_cast<size_t>(n));
  }
  ::close(fd);
  if (!status.ok()) return status;
  return digest;
}

absl::StatusOr<SafetensorsStreamWriter> SafetensorsStreamWriter::Create(
    const std::string& path, absl::Span<const TensorToWrite> tensors,
    const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::set<std::string> names;
  uint64_t offset = 0;
  for (const TensorToWrite& t : tensors) {
    const size_t bytes = DTypeBytes(t.dtype);
    if (t.name.empty() || t.name == "__metadata__" || !names.insert(t.name).second || bytes == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("WriteSafetensors: tensor \"", t.name, "\" (dtype \"", t.dtype,
                       "\"): an empty, reserved or repeated name, or an unknown dtype"));
    }
    uint64_t elements = 1;
    for (int64_t d : t.shape) {
      if (d < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("WriteSafetensors: tensor \"", t.name, "\" has a negative size"));
      }
      elements *= static_cast<uint64_t>(d);
    }
    const uint64_t size = elements * bytes;
    header[t.name] = {
        {"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {offset, offset + size}}};
    offset += size;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // The tensors' bytes 8-byte aligned.
  char length[8];
  for (int i = 0; i < 8; ++i) length[i] = static_cast<char>((text.size() >> (8 * i)) & 0xff);
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return OsError("cannot create", path);
  SafetensorsStreamWriter writer(path, fd, offset);
  MIMO_RETURN_IF_ERROR(WriteAll(fd, length, 8, path, writer.digest_));
  MIMO_RETURN_IF_ERROR(WriteAll(fd, text.data(), text.size(), path, writer.digest_));
  return writer;
}

SafetensorsStreamWriter::SafetensorsStreamWriter(SafetensorsStreamWriter&& other) noexcept
    : path_(std::move(other.path_)),
      fd_(std::exchange(other.fd_, -1)),
      remaining_(other.remaining_),
      digest_(other.digest_) {}

SafetensorsStreamWriter::~SafetensorsStreamWriter() {
  if (fd_ >= 0) ::close(fd_);
}

absl::Status SafetensorsStreamWriter::Append(absl::Span<const char> bytes) {
  if (fd_ < 0) return absl::FailedPreconditionError(absl::StrCat(path_, " is finished"));
  if (bytes.size() > remaining_) {
    return absl::InvalidArgumentError(absl::StrCat("WriteSafetensors: ", bytes.size(),
                                                   " bytes given where ", remaining_,
                                                   " remain for ", path_, "'s tensors"));
  }
  remaining_ -= bytes.size();
  return WriteAll(fd_, bytes.data(), bytes.size(), path_, digest_);
}

absl::StatusOr<FileDigest> SafetensorsStreamWriter::Finish() {
  if (fd_ < 0) return absl::FailedPreconditionError(absl::StrCat(path_, " is finished"));
  const int fd = std::exchange(fd_, -1);
  absl::Status status;
  if (remaining_ > 0) {
    status = absl::FailedPreconditionError(absl::StrCat("WriteSafetensors: ", path_, " is missing ",
                                                        remaining_, " bytes of its tensors"));
  }
  if (status.ok() && ::fsync(fd) != 0) status = OsError("cannot fsync", path_);
  if (::close(fd) != 0 && status.ok()) status = OsError("cannot close", path_);
  if (!status.ok()) return status;
  return digest_;
}

absl::StatusOr<FileDigest> WriteSafetensors(const std::string& path,
                                            absl::Span<const TensorToWrite> tensors,
                                            const std::map<std::string, std::string>& metadata) {
  for (const TensorToWrite& t : tensors) {
    uint64_t elements = 1;
    for (int64_t d : t.shape) elements *= d < 0 ? 0 : static_cast<uint64_t>(d);
    if (elements > 0 && t.data == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("WriteSafetensors: tensor \"", t.name, "\" has no data"));
    }
  }
  MIMO_ASSIGN_OR_RETURN(SafetensorsStreamWriter writer,
                        SafetensorsStreamWriter::Create(path, tensors, metadata));
  for (const TensorToWrite& t : tensors) {
    uint64_t bytes = DTypeBytes(t.dtype);
    for (int64_t d : t.shape) bytes *= static_cast<uint64_t>(d);
    MIMO_RETURN_IF_ERROR(writer.Append({static_cast<const char*>(t.data), bytes}));
  }
  return writer.Finish();
}

}  // namespace mimo::checkpoint
