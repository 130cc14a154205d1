// SamplePrefetcher: each Fetch split into up to `threads` chunks read by std::async tasks.
#include "worker/sample_prefetcher.h"

#include <algorithm>
#include <utility>

#include "absl/container/flat_hash_set.h"

namespace mimo::worker {

SamplePrefetcher::SamplePrefetcher(const data::SampleSource& source, int threads)
    : source_(source), threads_(std::max(threads, 1)) {}

void SamplePrefetcher::Fetch(const std::vector<int64_t>& indices) {
  std::vector<int64_t> fresh;
  absl::flat_hash_set<int64_t> seen;
  for (int64_t i : indices) {
    if (!where_.contains(i) && seen.insert(i).second) fresh.push_back(i);
  }
  const size_t per_chunk = (fresh.size() + threads_ - 1) / threads_;
  for (size_t begin = 0; begin < fresh.size(); begin += per_chunk) {
    std::vector<int64_t> part(fresh.begin() + begin,
                              fresh.begin() + std::min(fresh.size(), begin + per_chunk));
    auto chunk = std::make_shared<Chunk>();
    for (size_t k = 0; k < part.size(); ++k) where_[part[k]] = {chunk, k};
    chunk->future = std::async(std::launch::async, [this, part = std::move(part)] {
      std::vector<absl::StatusOr<data::Sample>> out;
      out.reserve(part.size());
      for (int64_t i : part) out.push_back(source_.Get(i));
      return out;
    });
  }
}

absl::StatusOr<data::Sample> SamplePrefetcher::Take(int64_t index) {
  auto it = where_.find(index);
  if (it == where_.end()) return source_.Get(index);
  const Place place = it->second;
  where_.erase(it);
  Chunk& chunk = *place.chunk;
  if (!chunk.done) {
    chunk.samples = chunk.future.get();
    chunk.done = true;
  }
  return std::move(chunk.samples[place.offset]);
}

}  // namespace mimo::worker
