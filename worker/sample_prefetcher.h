// Samples read ahead on background threads: the trainer asks for the indices of the coming steps
// and takes them when it packs their micro-batches, so decoding images (WebDataset shards)
// overlaps the compute of the step before.
#pragma once

#include <cstdint>
#include <future>
#include <memory>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "data/sample_source.h"

namespace mimo::worker {

class SamplePrefetcher {
 public:
  // `source` (not owned) outlives this; `threads` >= 1 read at once. Destruction waits for the
  // reads in flight (their std::async futures do).
  SamplePrefetcher(const data::SampleSource& source, int threads);

  // Starts reading `indices` in the background (an index already requested is skipped).
  void Fetch(const std::vector<int64_t>& indices);
  // Sample `index` (its read's error, if it failed): read ahead if it was requested, else now.
  // Each requested index is handed out once.
  absl::StatusOr<data::Sample> Take(int64_t index);
  // Indices requested and not taken yet.
  int64_t pending() const { return static_cast<int64_t>(where_.size()); }

 private:
  struct Chunk {
    std::future<std::vector<absl::StatusOr<data::Sample>>> future;
    std::vector<absl::StatusOr<data::Sample>> samples;  // Once `future` is taken.
    bool done = false;
  };
  struct Place {
    std::shared_ptr<Chunk> chunk;
    size_t offset = 0;
  };

  const data::SampleSource& source_;
  const int threads_;
  absl::flat_hash_map<int64_t, Place> where_;
};

}  // namespace mimo::worker
