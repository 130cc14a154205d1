// A caching allocator: carves blocks from large segments and keeps freed blocks for reuse, so
// that training steps make no cudaMalloc/cudaFree once warm. Independent of CUDA: the segments
// come from a SegmentSource (cudaMalloc/cudaFree for a GPU, see cuda_allocator.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <tuple>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "kernels/allocator.h"

namespace mimo::kernels {

// Where segments come from and go back to.
struct SegmentSource {
  // `bytes` of device memory, or ResourceExhausted (anything else is passed on as is).
  std::function<absl::StatusOr<void*>(size_t bytes)> allocate;
  std::function<void(void* ptr)> free;
};

struct CachingAllocatorOptions {
  // Every request is rounded up to a multiple of this (and so aligned to it); a power of two.
  size_t round = 512;
  // Requests of at most this many bytes share small segments; larger ones get large segments.
  size_t small_limit = size_t{1} << 20;
  // Size of every small segment.
  size_t small_segment = size_t{2} << 20;
  // Large segments are rounded up to a multiple of this.
  size_t large_round = size_t{2} << 20;
};

// Best fit among the cached blocks of the request's pool (small or large) and stream; a block
// larger than needed is split (small pool: when at least `round` bytes remain; large pool: when
// more than small_limit remain), and a freed block merges with free neighbours of its segment.
// When the source is out of memory, every wholly free segment is returned to it and the request
// retried once (not while a private pool is open: a CUDA graph may be capturing); then it fails
// with ResourceExhausted and the statistics. Private pools (Allocator::BeginPrivatePool) have
// segments and free blocks of their own, never released to the source before ReleasePrivatePool.
// Thread-safe.
class CachingAllocator final : public Allocator {
 public:
  CachingAllocator(Device device, SegmentSource source, CachingAllocatorOptions options = {});
  // Returns every segment to the source. Blocks still allocated are lost with them.
  ~CachingAllocator() override;

  Device device() const override { return device_; }
  absl::StatusOr<void*> Allocate(size_t bytes, StreamHandle stream = nullptr) override;
  // Keeps the block for reuse by later requests on the stream it was allocated for.
  void Free(void* ptr) override;
  AllocatorStats stats() override;
  absl::StatusOr<PoolId> BeginPrivatePool(StreamHandle stream) override;
  absl::Status EndPrivatePool(StreamHandle stream) override;
  void ReleasePrivatePool(PoolId pool) override;
  // Returns every wholly free segment of the shared cache to the source (none while a private pool
  // is open).
  void EmptyCache();

 private:
  struct Block {
    char* ptr = nullptr;
    size_t size = 0;
    StreamHandle stream = nullptr;
    PoolId pool = 0;     // 0: the shared cache; else a private pool.
    bool small = false;  // Small or large segments.
    bool free = false;
    Block* prev = nullptr;  // Neighbours in the same segment, by address.
    Block* next = nullptr;
  };
  // Free blocks ordered for best fit: by pool, segment size class, stream, size, address.
  struct ByFit {
    bool operator()(const Block* a, const Block* b) const {
      return std::make_tuple(a->pool, a->small, a->stream, a->size, a->ptr) <
             std::make_tuple(b->pool, b->small, b->stream, b->size, b->ptr);
    }
  };

  Block* FindFree(PoolId pool, bool small, StreamHandle stream, size_t size)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<Block*> NewSegment(PoolId pool, bool small, StreamHandle stream, size_t size)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Marks `block` free, merges it with free neighbours of its segment and caches the result.
  void InsertFree(Block* block) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ReleaseFreeSegments() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void UpdateLargestFree() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Device device_;
  const SegmentSource source_;
  const CachingAllocatorOptions options_;
  absl::Mutex mu_;
  AllocatorStats stats_ ABSL_GUARDED_BY(mu_);
  std::set<Block*, ByFit> free_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<void*, Block*> live_ ABSL_GUARDED_BY(mu_);
  // Every block, owned here; segment heads are blocks whose prev is null.
  absl::flat_hash_map<Block*, std::unique_ptr<Block>> blocks_ ABSL_GUARDED_BY(mu_);
  // Private pools: the open one of each stream, those ended and not yet released, and the blocks
  // from outside each pool freed while it was open (held back, neither live nor free).
  PoolId next_pool_ ABSL_GUARDED_BY(mu_) = 1;
  absl::flat_hash_map<StreamHandle, PoolId> open_pools_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<PoolId> ended_pools_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<PoolId, std::vector<Block*>> held_ ABSL_GUARDED_BY(mu_);
};

}  // namespace mimo::kernels
