// RAII CUDA streams and events on one device, created through checked calls.
#include "kernels/cuda_stream.h"

#include <utility>

#include "kernels/cuda_device_guard.h"
#include "kernels/cuda_status.h"

namespace mimo::kernels {

absl::StatusOr<CudaStream> CudaStream::Create(int device) {
  MIMO_RETURN_IF_ERROR(CheckCudaDevice(device, "CudaStream::Create"));
  CudaDeviceGuard guard(device);
  cudaStream_t stream = nullptr;
  MIMO_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  return CudaStream(stream, device);
}

CudaStream::CudaStream(CudaStream&& other) noexcept
    : stream_(std::exchange(other.stream_, nullptr)), device_(other.device_) {}

CudaStream& CudaStream::operator=(CudaStream&& other) noexcept {
  std::swap(stream_, other.stream_);  // `other` destroys what this held.
  std::swap(device_, other.device_);
  return *this;
}

CudaStream::~CudaStream() {
  if (stream_ == nullptr) return;
  CudaDeviceGuard guard(device_);
  cudaStreamDestroy(stream_);  // Returns at once; the stream is released after its work.
}

absl::Status CudaStream::Synchronize() const {
  MIMO_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  return absl::OkStatus();
}

absl::StatusOr<CudaEvent> CudaEvent::Create(int device, bool timing) {
  MIMO_RETURN_IF_ERROR(CheckCudaDevice(device, "CudaEvent::Create"));
  CudaDeviceGuard guard(device);
  cudaEvent_t event = nullptr;
  MIMO_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(
      &event, timing ? cudaEventDefault : cudaEventDisableTiming | cudaEventBlockingSync));
  return CudaEvent(event, device);
}

CudaEvent::CudaEvent(CudaEvent&& other) noexcept
    : event_(std::exchange(other.event_, nullptr)), device_(other.device_) {}

CudaEvent& CudaEvent::operator=(CudaEvent&& other) noexcept {
  std::swap(event_, other.event_);  // `other` destroys what this held.
  std::swap(device_, other.device_);
  return *this;
}

CudaEvent::~CudaEvent() {
  if (event_ == nullptr) return;
  CudaDeviceGuard guard(device_);
  cudaEventDestroy(event_);
}

absl::Status CudaEvent::Record(const CudaStream& stream) {
  MIMO_CUDA_RETURN_IF_ERROR(cudaEventRecord(event_, stream.get()));
  return absl::OkStatus();
}

absl::Status CudaEvent::WaitOn(const CudaStream& stream) const {
  MIMO_CUDA_RETURN_IF_ERROR(cudaStreamWaitEvent(stream.get(), event_, 0));
  return absl::OkStatus();
}

absl::Status CudaEvent::Synchronize() const {
  MIMO_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(event_));
  return absl::OkStatus();
}

absl::StatusOr<float> CudaEvent::MillisecondsSince(const CudaEvent& start) const {
  float ms = 0;
  MIMO_CUDA_RETURN_IF_ERROR(cudaEventElapsedTime(&ms, start.event_, event_));
  return ms;
}

}  // namespace mimo::kernels
