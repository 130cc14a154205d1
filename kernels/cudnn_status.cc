// Turns cuDNN errors into absl::Status naming the failing call, its location and cuDNN's message.
#include "kernels/cudnn_status.h"

#include <string>

#include "absl/strings/str_cat.h"

namespace mimo::kernels {

absl::Status CudnnStatus(cudnnStatus_t status, const char* call, const char* file, int line) {
  if (status == CUDNN_STATUS_SUCCESS) return absl::OkStatus();
  char detail[512] = {};
  cudnnGetLastErrorString(detail, sizeof(detail));
  std::string message =
      absl::StrCat(file, ":", line, ": ", call, " failed: ", cudnnGetErrorString(status));
  if (detail[0] != '\0') absl::StrAppend(&message, " (", detail, ")");
  // cuDNN 9 statuses are grouped by their thousands digit: 2xxx bad parameter, 3xxx not
  // supported, 4xxx internal, 5xxx execution failed.
  const int category = static_cast<int>(status) / 1000;
  if (status == CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED ||
      status == CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED) {
    return absl::ResourceExhaustedError(message);
  }
  if (category == 2) return absl::InvalidArgumentError(message);
  if (category == 3) return absl::UnimplementedError(message);
  return absl::InternalError(message);
}

}  // namespace mimo::kernels
