// A committed checkpoint read as whole tensors: every rank's model and optimizer files opened
// (headers only), each tensor's slices placed by the "shards" (and, for the distributed
// optimizer's runs, "pieces") metadata its files record, so a tensor is assembled from
// whichever ranks hold it (tp slices, ep experts, dp runs; one copy of replicas) into its full
// tensor, or into any region of it (another layout's slice), one tensor at a time (never the
// whole model in memory).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "checkpoint/safetensors.h"
#include "common/byte_buffer.h"

namespace mimo::checkpoint {

// Per dimension, ranges of the full dimension in order: (start, size).
using Region = std::vector<std::vector<std::pair<int64_t, int64_t>>>;

// One rank's slice of a tensor: the file, per dimension the ranges of the full dimension it
// holds (one range [0, size) for a dimension it holds whole), and, for a run of the distributed
// optimizer, which elements of that slice (row-major) the file holds.
struct Slice {
  int file = 0;  // Index into ConsolidatedReader::files().
  Region ranges;
  int64_t run_begin = 0;  // Elements [run_begin, run_end) of the slice; run_end -1: all of it.
  int64_t run_end = -1;
};

struct WholeTensor {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;  // The full shape.
  std::vector<Slice> slices;   // Distinct slices (replicas' copies left out), covering it.
  bool optimizer = false;      // From the optimizer files (masters, moments, expert biases).
  uint64_t bytes() const;
};

class ConsolidatedReader {
 public:
  // Reads `dir`'s model_rank_*.safetensors and optim_rank_*.safetensors headers. A model file's
  // "shards" place its tensors; an optimizer file's place "<param>.master", ".exp_avg" and
  // ".exp_avg_sq" where <param> lies, its "pieces" ({param: {"offset", "shape"}}) the runs of
  // them. DataLoss naming the file and tensor when slices of a tensor disagree (dtype, full
  // shape), overlap without being the same slice, or leave part of the full tensor uncovered;
  // NotFound for a folder without model files.
  static absl::StatusOr<ConsolidatedReader> Open(const std::string& dir);
  // `paths` read together as Open reads a folder's files (optimizer files are those named
  // optim_rank_*): say, an export's files of whole tensors. With `partial` the files need not
  // cover every tensor (some ranks' files of a checkpoint): ReadRegion then fails with DataLoss
  // for a region they do not hold. NotFound for an empty list.
  static absl::StatusOr<ConsolidatedReader> OpenFiles(std::vector<std::string> paths,
                                                      bool partial = false);

  // Every tensor, by name.
  const std::map<std::string, WholeTensor>& tensors() const { return tensors_; }
  const std::vector<std::string>& files() const { return paths_; }
  // The full tensor `name` (row-major, its dtype) into `out` of exactly bytes(). Read and
  // ReadRegion share a read buffer: one call at a time.
  absl::Status Read(const std::string& name, absl::Span<char> out) const;
  // The part `region` of tensor `name` (per dimension, ranges of the full dimension, in order)
  // into `out` (row-major over the region, its dtype), reading only the files whose slices meet
  // it. InvalidArgument for a region outside the tensor, with overlapping ranges, or an `out` of
  // another size; DataLoss when the files do not hold all of it (a partial open).
  absl::Status ReadRegion(const std::string& name, const Region& region,
                          absl::Span<char> out) const;
  // The files whose slices meet `region` of `name` (for a resharding plan).
  std::vector<int> FilesOf(const std::string& name, const Region& region) const;

 private:
  std::vector<std::string> paths_;
  std::vector<SafetensorsReader> readers_;
  std::map<std::string, WholeTensor> tensors_;
  mutable ByteBuffer local_;  // A slice as its file holds it.
};

}  // namespace mimo::checkpoint
