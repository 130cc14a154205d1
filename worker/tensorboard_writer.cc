// TensorBoardWriter: Event records framed as TFRecord, flushed after each.
#include "worker/tensorboard_writer.h"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "common/crc32c.h"
#include "common/status_macros.h"
#include "tensorboard/event.pb.h"

namespace mimo::worker {
namespace {

absl::Status OsError(const std::string& what, const std::string& path) {
  return absl::Status(errno == ENOSPC ? absl::StatusCode::kResourceExhausted
                                      : absl::StatusCode::kFailedPrecondition,
                      absl::StrCat(what, " ", path, ": ", std::strerror(errno)));
}

double Seconds(absl::Time t) { return absl::ToDoubleSeconds(t - absl::UnixEpoch()); }

void PutLittleEndian(uint64_t v, int bytes, std::string& out) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}

uint64_t GetLittleEndian(const char* p, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= static_cast<uint64_t>(static_cast<uint8_t>(p[i])) << (8 * i);
  return v;
}

}  // namespace

absl::StatusOr<std::unique_ptr<TensorBoardWriter>> TensorBoardWriter::Create(
    const std::string& dir, const std::string& host, absl::Time now) {
  std::error_code error;
  std::filesystem::create_directories(dir, error);
  if (error) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot create the folder ", dir, ": ", error.message()));
  }
  const std::string path =
      (std::filesystem::path(dir) /
       absl::StrCat("events.out.tfevents.", absl::ToUnixSeconds(now), ".", host))
          .string();
  FILE* file = std::fopen(path.c_str(), "ab");
  if (file == nullptr) return OsError("cannot open", path);
  std::unique_ptr<TensorBoardWriter> writer(new TensorBoardWriter(path, file));
  tensorboard::Event version;
  version.set_wall_time(Seconds(now));
  version.set_file_version("brain.Event:2");
  MIMO_RETURN_IF_ERROR(writer->WriteRecord(version.SerializeAsString()));
  return writer;
}

TensorBoardWriter::~TensorBoardWriter() { std::fclose(file_); }

absl::Status TensorBoardWriter::WriteScalars(
    int64_t step, const std::vector<std::pair<std::string, double>>& scalars, absl::Time time) {
  tensorboard::Event event;
  event.set_wall_time(Seconds(time));
  event.set_step(step);
  for (const auto& [tag, value] : scalars) {
    tensorboard::SummaryValue* v = event.mutable_summary()->add_value();
    v->set_tag(tag);
    v->set_simple_value(static_cast<float>(value));
  }
  return WriteRecord(event.SerializeAsString());
}

absl::Status TensorBoardWriter::WriteRecord(const std::string& data) {
  std::string record;
  PutLittleEndian(data.size(), 8, record);
  PutLittleEndian(MaskedCrc32c(record.data(), 8), 4, record);
  record += data;
  PutLittleEndian(MaskedCrc32c(data.data(), data.size()), 4, record);
  if (std::fwrite(record.data(), 1, record.size(), file_) != record.size() ||
      std::fflush(file_) != 0) {
    return OsError("cannot write", path_);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> ReadTfRecords(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return OsError("cannot open", path);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::string> records;
  size_t at = 0;
  while (at < bytes.size()) {
    if (bytes.size() - at < 12) {
      return absl::DataLossError(absl::StrCat(path, ": a truncated record header at ", at));
    }
    const uint64_t n = GetLittleEndian(bytes.data() + at, 8);
    if (GetLittleEndian(bytes.data() + at + 8, 4) != MaskedCrc32c(bytes.data() + at, 8)) {
      return absl::DataLossError(absl::StrCat(path, ": a bad length checksum at ", at));
    }
    if (bytes.size() - at - 12 < n + 4) {
      return absl::DataLossError(absl::StrCat(path, ": a truncated record at ", at));
    }
    const char* data = bytes.data() + at + 12;
    if (GetLittleEndian(data + n, 4) != MaskedCrc32c(data, n)) {
      return absl::DataLossError(absl::StrCat(path, ": a bad data checksum at ", at));
    }
    records.emplace_back(data, n);
    at += 12 + n + 4;
  }
  return records;
}

}  // namespace mimo::worker
