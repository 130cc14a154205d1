// PinnedStaging: a small pool of pinned buffers, each reused once the event recorded after its
// last copy has completed.
#include "kernels/pinned_staging.h"

#include <cstring>

#include "common/status_macros.h"
#include "kernels/cuda_status.h"

namespace mimo::kernels {
namespace {

// Buffers are made in whole MiB, so micro-batches of slightly different sizes share them.
size_t RoundUp(size_t bytes) {
  constexpr size_t kUnit = size_t{1} << 20;
  return (bytes + kUnit - 1) / kUnit * kUnit;
}

}  // namespace

PinnedStaging::PinnedStaging(int device, PinnedStagingOptions options)
    : device_(device), options_(options) {}

PinnedStaging::~PinnedStaging() {
  for (Buffer& b : buffers_) {
    if (b.busy) cudaEventSynchronize(b.done);
    cudaEventDestroy(b.done);
    cudaFreeHost(b.ptr);
  }
}

absl::Status PinnedStaging::Acquire(size_t bytes, Buffer** out) {
  *out = nullptr;
  // The smallest idle buffer that fits.
  for (Buffer& b : buffers_) {
    if (b.bytes < bytes) continue;
    if (b.busy) {
      const cudaError_t query = cudaEventQuery(b.done);
      if (query == cudaErrorNotReady) continue;
      MIMO_CUDA_RETURN_IF_ERROR(query);
      b.busy = false;
    }
    if (*out == nullptr || b.bytes < (*out)->bytes) *out = &b;
  }
  if (*out != nullptr) return absl::OkStatus();
  const size_t size = RoundUp(bytes);
  if (held_ + size <= options_.max_bytes) {
    Buffer b;
    MIMO_CUDA_RETURN_IF_ERROR(cudaHostAlloc(&b.ptr, size, cudaHostAllocPortable));
    if (const cudaError_t e = cudaEventCreateWithFlags(&b.done, cudaEventDisableTiming);
        e != cudaSuccess) {
      cudaFreeHost(b.ptr);
      MIMO_CUDA_RETURN_IF_ERROR(e);
    }
    b.bytes = size;
    held_ += size;
    buffers_.push_back(b);
    *out = &buffers_.back();
    return absl::OkStatus();
  }
  // No room: the least recently used busy buffer that fits, once its copy is done.
  for (Buffer& b : buffers_) {
    if (b.bytes >= bytes && (*out == nullptr || b.last_use < (*out)->last_use)) *out = &b;
  }
  if (*out != nullptr) {
    MIMO_CUDA_RETURN_IF_ERROR(cudaEventSynchronize((*out)->done));
    (*out)->busy = false;
  }
  return absl::OkStatus();
}

absl::Status PinnedStaging::CopyToDevice(void* dst, const void* host, size_t bytes,
                                         cudaStream_t stream) {
  if (bytes == 0) return absl::OkStatus();
  // A graph capture would keep a pooled buffer's address, which later copies overwrite.
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  MIMO_CUDA_RETURN_IF_ERROR(cudaStreamIsCapturing(stream, &capture));
  Buffer* buffer = nullptr;
  if (bytes >= options_.min_bytes && capture == cudaStreamCaptureStatusNone) {
    MIMO_RETURN_IF_ERROR(Acquire(bytes, &buffer));
  }
  if (buffer == nullptr) {
    MIMO_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dst, host, bytes, cudaMemcpyHostToDevice, stream));
    return absl::OkStatus();
  }
  std::memcpy(buffer->ptr, host, bytes);
  // Busy from the moment a copy may read it; a failed record leaves it busy until the stream is
  // idle (checked once more before it is handed out again).
  buffer->busy = true;
  buffer->last_use = ++uses_;
  MIMO_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(dst, buffer->ptr, bytes, cudaMemcpyHostToDevice, stream));
  if (const cudaError_t e = cudaEventRecord(buffer->done, stream); e != cudaSuccess) {
    cudaStreamSynchronize(stream);
    buffer->busy = false;
    MIMO_CUDA_RETURN_IF_ERROR(e);
  }
  return absl::OkStatus();
}

}  // namespace mimo::kernels
