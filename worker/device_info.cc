// What a worker offers: the CUDA devices this process sees, and one device's name and memory.
#include "worker/device_info.h"

#include "absl/strings/str_cat.h"

#ifdef MIMO_WORKER_HAVE_NCCL
#include <cuda_runtime_api.h>
#endif

namespace mimo::worker {

#ifdef MIMO_WORKER_HAVE_NCCL

int CudaDeviceCount() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // Not sticky, but leave no error behind.
    return 0;
  }
  return count;
}

absl::Status DescribeCudaDevice(int index, v1::WorkerInfo* info) {
  int count = 0;
  if (cudaError_t e = cudaGetDeviceCount(&count); e != cudaSuccess) {
    return absl::FailedPreconditionError(
        absl::StrCat("CUDA device ", index, " is not usable: cudaGetDeviceCount failed with ",
                     cudaGetErrorName(e), " (", cudaGetErrorString(e), ")"));
  }
  if (index < 0 || index >= count) {
    return absl::FailedPreconditionError(absl::StrCat("CUDA device ", index,
                                                      " does not exist: this process sees ", count,
                                                      count == 1 ? " device" : " devices"));
  }
  cudaDeviceProp prop{};
  if (cudaError_t e = cudaGetDeviceProperties(&prop, index); e != cudaSuccess) {
    return absl::FailedPreconditionError(absl::StrCat(
        "CUDA device ", index, ": cudaGetDeviceProperties failed with ", cudaGetErrorName(e)));
  }
  int previous = 0;
  cudaGetDevice(&previous);
  size_t free_bytes = 0, total_bytes = 0;
  cudaError_t e = cudaSetDevice(index);
  if (e == cudaSuccess) e = cudaMemGetInfo(&free_bytes, &total_bytes);
  cudaSetDevice(previous);
  if (e != cudaSuccess) {
    return absl::FailedPreconditionError(
        absl::StrCat("CUDA device ", index, " (", prop.name, "): cudaMemGetInfo failed with ",
                     cudaGetErrorName(e), " (", cudaGetErrorString(e), ")"));
  }
  info->set_device_name(prop.name);
  info->set_total_memory_bytes(static_cast<int64_t>(total_bytes));
  info->set_free_memory_bytes(static_cast<int64_t>(free_bytes));
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
