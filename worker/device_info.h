// What a worker offers: the CUDA devices this process sees, and one device's name and memory.
#pragma once

#include "absl/status/status.h"
#include "mimo/v1/worker_service.pb.h"

namespace mimo::worker {

// The CUDA devices visible to this process (CUDA_VISIBLE_DEVICES applies); 0 when there is no
// driver or device, or when this worker was built without CUDA.
int CudaDeviceCount();

// Sets info->device_name ("NVIDIA H100 80GB HBM3"), total_memory_bytes and free_memory_bytes for
// CUDA device `index`. FailedPrecondition naming the index and what is visible when the device
// does not exist, when the driver fails, or when this worker was built without CUDA.
absl::Status DescribeCudaDevice(int index, v1::WorkerInfo* info);

}  // namespace mimo::worker
