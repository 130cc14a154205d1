// Device memory for tensors: the allocator interface, its statistics, and the host allocator.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "kernels/device.h"

namespace mimo::kernels {

// A cudaStream_t, passed opaquely so that CPU code needs no CUDA header; null is CUDA's default
// stream (and the only value on the CPU).
using StreamHandle = void*;

// What an allocator holds. Bytes are the rounded sizes the allocator hands out.
struct AllocatorStats {
  int64_t allocated_bytes = 0;       // In live allocations.
  int64_t peak_allocated_bytes = 0;  // The most ever live at once.
  int64_t reserved_bytes = 0;        // Obtained from the system (live + cached).
  int64_t peak_reserved_bytes = 0;
  int64_t largest_free_block = 0;  // The largest cached block any request may get (0 without
                                   // a cache; private pools' blocks are not counted).
  int64_t allocations = 0;         // Allocate calls that succeeded.
  int64_t system_allocations = 0;  // Of which needed memory from the system (cudaMalloc).
  int64_t system_frees = 0;        // Segments given back (cudaFree).

  // The share of cached free memory that lies outside the largest free block, in [0, 1]: 0 when
  // all of it could serve one request, near 1 when it is scattered in small pieces. 0 without
  // cached memory.
  double Fragmentation() const;
  // "allocated 1.5 GiB (peak 2 GiB), reserved 3 GiB (peak 3 GiB), fragmentation 0.12".
  std::string ToString() const;
};

// Thread-safe. Memory from Allocate(bytes, stream) may be used by work on `stream` (and, after
// synchronizing with it, elsewhere); Free() may be called as soon as that work is enqueued: the
// caching allocator hands the block out again only to later work on the same stream.
class Allocator {
 public:
  virtual ~Allocator() = default;
  virtual Device device() const = 0;
  // At least `bytes` (> 0) bytes aligned to 256; ResourceExhausted when memory runs out,
  // InvalidArgument for 0 bytes.
  virtual absl::StatusOr<void*> Allocate(size_t bytes, StreamHandle stream = nullptr) = 0;
  // Returns memory from Allocate; null is a no-op.
  virtual void Free(void* ptr) = 0;
  virtual AllocatorStats stats() = 0;

  // Private pools, for CUDA graphs (kernels/cuda_graph.h). From BeginPrivatePool(stream) to
  // EndPrivatePool(stream), requests on `stream` get blocks from segments of the pool alone
  // (reused within it as usual), and blocks allocated on `stream` outside the pool and freed
  // meanwhile are held back; until ReleasePrivatePool(pool), neither is handed to any other
  // request nor given back to the device: the memory a graph captured on `stream` reads and writes
  // stays its replays' while the graph may run. Requests and frees of other streams are not
  // covered, nor blocks allocated before Begin and freed after End (keep those until the release).
  // Begin: FailedPrecondition while the stream's pool is open; End: when none is. Allocators
  // without a cache: Unimplemented.
  using PoolId = uint64_t;
  virtual absl::StatusOr<PoolId> BeginPrivatePool(StreamHandle stream);
  virtual absl::Status EndPrivatePool(StreamHandle stream);
  // The pool's blocks, free or held, join the shared cache; live ones join it when freed. Call
  // once no graph that used the pool can run. Ends the pool first if it is still open; a no-op
  // for a pool released already or unknown.
  virtual void ReleasePrivatePool(PoolId pool);
};

// Host memory straight from the C library (no cache); 256-byte aligned.
class CpuAllocator final : public Allocator {
 public:
  Device device() const override { return Device::Cpu(); }
  absl::StatusOr<void*> Allocate(size_t bytes, StreamHandle stream = nullptr) override;
  void Free(void* ptr) override;
  AllocatorStats stats() override;

 private:
  absl::Mutex mu_;
  AllocatorStats stats_ ABSL_GUARDED_BY(mu_);
  // Sizes of live allocations, for the statistics.
  absl::flat_hash_map<void*, size_t> sizes_ ABSL_GUARDED_BY(mu_);
};

// "1.5 GiB", "512 B": byte counts for messages.
std::string FormatBytes(int64_t bytes);

}  // namespace mimo::kernels
