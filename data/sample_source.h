// SampleSource: a dataset as the trainer sees it, random access by a global sample index so that
// any data-parallel rank can take any index and training resumes from the consumed-samples count
// with no other state.
#pragma once

#include <cstdint>

#include "absl/status/statusor.h"
#include "data/sample.h"

namespace mimo::data {

class SampleSource {
 public:
  virtual ~SampleSource() = default;

  // Samples in one epoch; > 0.
  virtual int64_t num_samples() const = 0;

  // Sample `index` (>= 0) of the global order; index / num_samples() is the epoch, index %
  // num_samples() the position in it. The same index gives the same sample on every rank and in
  // every process. InvalidArgument for a negative index; a source reading files returns their
  // errors (naming the file and member). Thread-compatible, and concurrent calls of this const
  // method are safe.
  virtual absl::StatusOr<Sample> Get(int64_t index) const = 0;
};

}  // namespace mimo::data
