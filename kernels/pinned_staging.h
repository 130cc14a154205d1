// Pinned host buffers that stage host-to-device copies: a copy from ordinary (pageable) memory
// is memcpy'd into pinned memory and its DMA enqueued on the stream, so the host does not wait
// for the stream to reach the copy (a large pageable cudaMemcpyAsync does: the driver's own
// staging buffers drain only in stream order).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"

namespace mimo::kernels {

struct PinnedStagingOptions {
  // Copies smaller than this go straight to cudaMemcpyAsync (the driver stages small pageable
  // copies without waiting). Default 64 KiB.
  size_t min_bytes = size_t{64} << 10;
  // Pinned memory held at most. A copy that finds every buffer busy and no room waits for the
  // oldest busy buffer large enough, or goes straight to cudaMemcpyAsync when none is.
  // Default 1 GiB.
  size_t max_bytes = size_t{1} << 30;
};

// Not thread-safe: one thread (the Ops' caller) copies through it.
class PinnedStaging {
 public:
  // For copies to `device`'s memory; nothing is allocated until the first staged copy.
  PinnedStaging(int device, PinnedStagingOptions options = {});
  PinnedStaging(const PinnedStaging&) = delete;
  PinnedStaging& operator=(const PinnedStaging&) = delete;
  // Waits for the copies in flight, then frees the pinned memory.
  ~PinnedStaging();

  // Enqueues a copy of `bytes` bytes from `host` to `dst` (device memory) on `stream`; `host`
  // (ordinary memory) may be reused as soon as this returns. Copies below min_bytes, and any
  // during a graph capture, go straight to cudaMemcpyAsync (a pinned `host` must then stay
  // untouched until the copy is done). The caller has made `device` current.
  absl::Status CopyToDevice(void* dst, const void* host, size_t bytes, cudaStream_t stream);

  // Pinned bytes held (for tests and reports).
  size_t held_bytes() const { return held_; }

 private:
  struct Buffer {
    void* ptr = nullptr;
    size_t bytes = 0;
    cudaEvent_t done = nullptr;  // Recorded after the buffer's last copy.
    bool busy = false;           // A copy from it may still be in flight.
    uint64_t last_use = 0;
  };
  // A buffer of at least `bytes` no copy uses any more, made or waited for; nullptr when none
  // can be had within max_bytes.
  absl::Status Acquire(size_t bytes, Buffer** out);

  int device_;
  PinnedStagingOptions options_;
  std::vector<Buffer> buffers_;
  size_t held_ = 0;
  uint64_t uses_ = 0;
};

}  // namespace mimo::kernels
