// A committed checkpoint read as whole tensors: every rank's model file opened (headers only),
// each parameter's slices placed by the "shards" metadata its files record, so a parameter is
// assembled from whichever ranks hold it (tp slices, ep experts; one copy of replicas) into its
// full tensor, one parameter at a time (never the whole model in memory).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "checkpoint/safetensors.h"

namespace mimo::checkpoint {

// One rank's slice of a parameter: the file, and per dimension the ranges of the full dimension
// it holds in order (one range [0, size) for a dimension it holds whole).
struct Slice {
  int file = 0;  // Index into ConsolidatedReader::files().
  std::vector<std::vector<std::pair<int64_t, int64_t>>> ranges;  // Per dim: (start, size).
};

struct WholeTensor {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;  // The full shape.
  std::vector<Slice> slices;   // Distinct slices (replicas' copies left out), covering it.
  uint64_t bytes() const;
};

class ConsolidatedReader {
 public:
  // Reads `dir`'s model_rank_*.safetensors headers. DataLoss naming the file and tensor when
  // slices of a parameter disagree (dtype, full shape), overlap without being the same slice, or
  // leave part of the full tensor uncovered; NotFound for a folder without model files.
  static absl::StatusOr<ConsolidatedReader> Open(const std::string& dir);

  // Every parameter, by name.
  const std::map<std::string, WholeTensor>& tensors() const { return tensors_; }
  const std::vector<std::string>& files() const { return paths_; }
  // The full tensor `name` (row-major, its dtype) into `out` of exactly bytes().
  absl::Status Read(const std::string& name, absl::Span<char> out) const;

 private:
  std::vector<std::string> paths_;
  std::vector<SafetensorsReader> readers_;
  std::map<std::string, WholeTensor> tensors_;
};

}  // namespace mimo::checkpoint
