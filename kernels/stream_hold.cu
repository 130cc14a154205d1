// Stream hold: a one-thread kernel that keeps a stream busy for a while (see stream_hold.h).
#include "kernels/cuda_status.h"
#include "kernels/stream_hold.h"

namespace mimo::kernels {
namespace {

__device__ __forceinline__ uint64_t GlobalTimerNs() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

__global__ void StreamHoldKernel(uint64_t nanoseconds) {
  const uint64_t start = GlobalTimerNs();
  while (GlobalTimerNs() - start < nanoseconds) __nanosleep(1000);
}

}  // namespace

absl::Status LaunchStreamHold(int64_t nanoseconds, cudaStream_t stream) {
  if (nanoseconds < 0) {
    return absl::InvalidArgumentError("LaunchStreamHold: needs a duration >= 0 ns");
  }
  StreamHoldKernel<<<1, 1, 0, stream>>>(static_cast<uint64_t>(nanoseconds));
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace mimo::kernels
