// TensorBoard event files without TensorFlow: Event protos (proto/tensorboard/event.proto) in
// TFRecord framing (length, masked CRC-32C of the length, data, masked CRC-32C of the data),
// scalars as summary values.
#pragma once

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace mimo::worker {

class TensorBoardWriter {
 public:
  // Creates `dir` (and its parents) and the file events.out.tfevents.<unix seconds>.<host> in
  // it, starting with the file-version record. The OS error, naming the path, on failure.
  static absl::StatusOr<std::unique_ptr<TensorBoardWriter>> Create(const std::string& dir,
                                                                   const std::string& host,
                                                                   absl::Time now = absl::Now());
  ~TensorBoardWriter();

  // One event at `step` holding every (tag, value) scalar, flushed to the file.
  absl::Status WriteScalars(int64_t step,
                            const std::vector<std::pair<std::string, double>>& scalars,
                            absl::Time time = absl::Now());
  const std::string& path() const { return path_; }

 private:
  TensorBoardWriter(std::string path, FILE* file) : path_(std::move(path)), file_(file) {}
  absl::Status WriteRecord(const std::string& data);

  std::string path_;
  FILE* file_;
};

// The records of a TFRecord file, each checked against its CRCs (DataLoss naming the offset
// otherwise).
absl::StatusOr<std::vector<std::string>> ReadTfRecords(const std::string& path);

}  // namespace mimo::worker
