// Stream hold: a one-thread kernel that keeps a stream busy for a while, so work enqueued behind
// it runs back to back, whatever the host's launch rate (used to time short kernels).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"

namespace mimo::kernels {

// Enqueues on `stream` a kernel that returns once the device's global timer has advanced by
// `nanoseconds` (>= 0; 0 returns at once) since it started. Fails on a negative duration or a
// launch error.
absl::Status LaunchStreamHold(int64_t nanoseconds, cudaStream_t stream);

}  // namespace mimo::kernels
