// RAII CUDA streams and events on one device, created through checked calls.
#pragma once

#include <cuda_runtime_api.h>

#include <memory>

#include "absl/status/statusor.h"

namespace mimo::kernels {

// A non-blocking stream on one device; destroyed (after its work completes) with the object.
class CudaStream {
 public:
  static absl::StatusOr<CudaStream> Create(int device);
  CudaStream(CudaStream&& other) noexcept;
  CudaStream& operator=(CudaStream&& other) noexcept;
  CudaStream(const CudaStream&) = delete;
  CudaStream& operator=(const CudaStream&) = delete;
  ~CudaStream();

  cudaStream_t get() const { return stream_; }
  int device() const { return device_; }
  // Waits for every piece of work enqueued so far.
  absl::Status Synchronize() const;

 private:
  CudaStream(cudaStream_t stream, int device) : stream_(stream), device_(device) {}
  cudaStream_t stream_ = nullptr;
  int device_ = 0;
};

// An event for ordering streams and timing work.
class CudaEvent {
 public:
  // timing false: no timing, and Synchronize() blocks the thread instead of spinning (for a
  // thread that waits long, such as a communication thread waiting for the backward).
  static absl::StatusOr<CudaEvent> Create(int device, bool timing = true);
  CudaEvent(CudaEvent&& other) noexcept;
  CudaEvent& operator=(CudaEvent&& other) noexcept;
  CudaEvent(const CudaEvent&) = delete;
  CudaEvent& operator=(const CudaEvent&) = delete;
  ~CudaEvent();

  cudaEvent_t get() const { return event_; }
  // Marks the point in `stream` reached by the work enqueued so far.
  absl::Status Record(const CudaStream& stream);
  // Makes later work on `stream` wait for this event (without blocking the host).
  absl::Status WaitOn(const CudaStream& stream) const;
  absl::Status Synchronize() const;
  // Milliseconds from `start` to this event; both recorded and complete.
  absl::StatusOr<float> MillisecondsSince(const CudaEvent& start) const;

 private:
  CudaEvent(cudaEvent_t event, int device) : event_(event), device_(device) {}
  cudaEvent_t event_ = nullptr;
  int device_ = 0;
};

}  // namespace mimo::kernels
