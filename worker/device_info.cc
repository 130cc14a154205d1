// What a worker offers: the CUDA devices this process sees, and one device's name and memory.
#include "worker/device_info.h"

#include "absl/strings/str_cat.h"

#ifdef MIMO_WORKER_HAVE_NCCL
#include "kernels/device_info.h"
#endif

namespace mimo::worker {

#ifdef MIMO_WORKER_HAVE_NCCL

int CudaDeviceCount() { return kernels::CudaDeviceCount(); }

absl::Status DescribeCudaDevice(int index, v1::WorkerInfo* info) {
  absl::StatusOr<kernels::CudaDevice> device = kernels::DescribeCudaDevice(index);
  if (absl::IsFailedPrecondition(device.status())) return device.status();
  if (!device.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("CUDA device ", index, " is not usable: ", device.status().message()));
  }
  info->set_device_name(device->name);
  info->set_total_memory_bytes(device->total_bytes);
  info->set_free_memory_bytes(device->free_bytes);
  return absl::OkStatus();
}

#else

int CudaDeviceCount() { return 0; }

absl::Status DescribeCudaDevice(int index, v1::WorkerInfo*) {
  return absl::FailedPreconditionError(
      absl::StrCat("CUDA device ", index,
                   " is not usable: this mimo-worker was built without "
                   "CUDA and NCCL"));
}

#endif

}  // namespace mimo::worker
