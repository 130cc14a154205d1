// A caching allocator: carves blocks from large segments and keeps freed blocks for reuse.
#include "kernels/caching_allocator.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"

namespace mimo::kernels {
namespace {

size_t RoundUp(size_t n, size_t multiple) { return (n + multiple - 1) / multiple * multiple; }

}  // namespace

CachingAllocator::CachingAllocator(Device device, SegmentSource source,
                                   CachingAllocatorOptions options)
    : device_(device), source_(std::move(source)), options_(options) {}

CachingAllocator::~CachingAllocator() {
  absl::MutexLock lock(&mu_);
  for (const auto& [ptr, block] : blocks_) {
    if (block->prev == nullptr) source_.free(block->ptr);
  }
}

CachingAllocator::Block* CachingAllocator::FindFree(PoolId pool, bool small, StreamHandle stream,
                                                    size_t size) {
  Block key;
  key.pool = pool;
  key.small = small;
  key.stream = stream;
  key.size = size;
  key.ptr = nullptr;
  auto it = free_.lower_bound(&key);
  if (it == free_.end() || (*it)->pool != pool || (*it)->small != small ||
      (*it)->stream != stream) {
    return nullptr;
  }
  return *it;
}

absl::StatusOr<CachingAllocator::Block*> CachingAllocator::NewSegment(PoolId pool, bool small,
                                                                      StreamHandle stream,
                                                                      size_t size) {
  const size_t bytes = small ? options_.small_segment : RoundUp(size, options_.large_round);
  absl::StatusOr<void*> memory = source_.allocate(bytes);
  if (!memory.ok() && absl::IsResourceExhausted(memory.status())) {
    ReleaseFreeSegments();
    memory = source_.allocate(bytes);
  }
  if (!memory.ok()) return memory.status();
  auto block = std::make_unique<Block>();
  block->ptr = static_cast<char*>(*memory);
  block->size = bytes;
  block->stream = stream;
  block->pool = pool;
  block->small = small;
  block->free = true;
  Block* raw = block.get();
  blocks_[raw] = std::move(block);
  free_.insert(raw);
  stats_.reserved_bytes += static_cast<int64_t>(bytes);
  stats_.peak_reserved_bytes = std::max(stats_.peak_reserved_bytes, stats_.reserved_bytes);
  ++stats_.system_allocations;
  return raw;
}

absl::StatusOr<void*> CachingAllocator::Allocate(size_t bytes, StreamHandle stream) {
  if (bytes == 0) return absl::InvalidArgumentError("cannot allocate 0 bytes");
  if (bytes > (size_t{1} << 62)) {
    return absl::ResourceExhaustedError(absl::StrCat("out of memory on ", device_.ToString(),
                                                     ": asked ", bytes,
                                                     " bytes, more than any device has"));
  }
  const size_t size = RoundUp(bytes, options_.round);
  const bool small = size <= options_.small_limit;
  absl::MutexLock lock(&mu_);
  const auto open = open_pools_.find(stream);
  const PoolId pool = open == open_pools_.end() ? 0 : open->second;
  Block* block = FindFree(pool, small, stream, size);
  if (block == nullptr) {
    absl::StatusOr<Block*> segment = NewSegment(pool, small, stream, size);
    if (!segment.ok()) {
      UpdateLargestFree();
      return absl::Status(
          segment.status().code(),
          absl::StrCat("out of memory on ", device_.ToString(), ": asked ",
                       FormatBytes(static_cast<int64_t>(bytes)), "; this allocator has ",
                       stats_.ToString(), "; ", segment.status().message()));
    }
    block = *segment;
  }
  free_.erase(block);
  const size_t remaining = block->size - size;
  if (small ? remaining >= options_.round : remaining > options_.small_limit) {
    auto rest = std::make_unique<Block>();
    rest->ptr = block->ptr + size;
    rest->size = remaining;
    rest->stream = stream;
    rest->pool = pool;
    rest->small = small;
    rest->free = true;
    rest->prev = block;
    rest->next = block->next;
    if (block->next != nullptr) block->next->prev = rest.get();
    block->next = rest.get();
    block->size = size;
    free_.insert(rest.get());
    blocks_[rest.get()] = std::move(rest);
  }
  block->free = false;
  live_[block->ptr] = block;
  stats_.allocated_bytes += static_cast<int64_t>(block->size);
  stats_.peak_allocated_bytes = std::max(stats_.peak_allocated_bytes, stats_.allocated_bytes);
  ++stats_.allocations;
  return static_cast<void*>(block->ptr);
}

void CachingAllocator::Free(void* ptr) {
  if (ptr == nullptr) return;
  absl::MutexLock lock(&mu_);
  auto it = live_.find(ptr);
  if (it == live_.end()) return;  // Not ours (or freed twice): nothing to do.
  Block* block = it->second;
  live_.erase(it);
  stats_.allocated_bytes -= static_cast<int64_t>(block->size);
  const auto open = open_pools_.find(block->stream);
  if (open != open_pools_.end() && block->pool != open->second) {
    held_[open->second].push_back(block);  // A capture may have used it: kept from others.
    return;
  }
  InsertFree(block);
}

void CachingAllocator::InsertFree(Block* block) {
  block->free = true;
  // Merge with free neighbours of the segment (they share pool and stream).
  for (Block* neighbour : {block->prev, block->next}) {
    if (neighbour == nullptr || !neighbour->free) continue;
    free_.erase(neighbour);
    Block* first = neighbour == block->prev ? neighbour : block;
    Block* second = neighbour == block->prev ? block : neighbour;
    first->size += second->size;
    first->next = second->next;
    if (second->next != nullptr) second->next->prev = first;
    blocks_.erase(second);
    block = first;
  }
  free_.insert(block);
}

void CachingAllocator::ReleaseFreeSegments() {
  // cudaFree while a graph is capturing would end the capture or sync with it.
  if (!open_pools_.empty()) return;
  std::vector<Block*> whole;
  for (Block* block : free_) {
    if (block->pool == 0 && block->prev == nullptr && block->next == nullptr) {
      whole.push_back(block);
    }
  }
  for (Block* block : whole) {
    free_.erase(block);
    source_.free(block->ptr);
    stats_.reserved_bytes -= static_cast<int64_t>(block->size);
    ++stats_.system_frees;
    blocks_.erase(block);
  }
}

void CachingAllocator::EmptyCache() {
  absl::MutexLock lock(&mu_);
  ReleaseFreeSegments();
}

void CachingAllocator::UpdateLargestFree() {
  stats_.largest_free_block = 0;
  for (const Block* block : free_) {
    if (block->pool != 0) continue;
    stats_.largest_free_block =
        std::max(stats_.largest_free_block, static_cast<int64_t>(block->size));
  }
}

absl::StatusOr<Allocator::PoolId> CachingAllocator::BeginPrivatePool(StreamHandle stream) {
  absl::MutexLock lock(&mu_);
  if (open_pools_.contains(stream)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "CachingAllocator on ", device_.ToString(), ": stream ",
        absl::Hex(reinterpret_cast<uintptr_t>(stream)),
        " already has an open private pool (one CUDA graph captures a stream at a time)"));
  }
  const PoolId pool = next_pool_++;
  open_pools_[stream] = pool;
  return pool;
}

absl::Status CachingAllocator::EndPrivatePool(StreamHandle stream) {
  absl::MutexLock lock(&mu_);
  const auto open = open_pools_.find(stream);
  if (open == open_pools_.end()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "CachingAllocator on ", device_.ToString(), ": no open private pool on stream ",
        absl::Hex(reinterpret_cast<uintptr_t>(stream))));
  }
  ended_pools_.insert(open->second);
  open_pools_.erase(open);
  return absl::OkStatus();
}

void CachingAllocator::ReleasePrivatePool(PoolId pool) {
  absl::MutexLock lock(&mu_);
  for (auto open = open_pools_.begin(); open != open_pools_.end(); ++open) {
    if (open->second == pool) {
      open_pools_.erase(open);
      ended_pools_.insert(pool);
      break;
    }
  }
  if (!ended_pools_.erase(pool)) return;
  // A pool's segments hold its blocks alone: retag them all, re-keying the free ones.
  std::vector<Block*> now_free;
  for (const auto& [raw, block] : blocks_) {
    if (block->pool != pool) continue;
    if (block->free) {
      free_.erase(raw);
      now_free.push_back(raw);
    }
    block->pool = 0;
  }
  for (Block* block : now_free) free_.insert(block);
  const auto held = held_.find(pool);
  if (held == held_.end()) return;
  for (Block* block : held->second) InsertFree(block);
  held_.erase(held);
}

AllocatorStats CachingAllocator::stats() {
  absl::MutexLock lock(&mu_);
  UpdateLargestFree();
  return stats_;
}

}  // namespace mimo::kernels
