// Turns cuDNN errors into absl::Status naming the failing call, its location and cuDNN's message.
#pragma once

#include <cudnn.h>

#include "absl/status/status.h"
#include "common/status_macros.h"

namespace mimo::kernels {

// OK for CUDNN_STATUS_SUCCESS; otherwise an error whose message reads "file.cc:42:
// cudnnBackendFinalize(plan) failed: CUDNN_STATUS_NOT_SUPPORTED_... (cuDNN's last error string)".
// NOT_SUPPORTED statuses become Unimplemented, BAD_PARAM ones InvalidArgument, allocation
// failures ResourceExhausted, the rest Internal.
absl::Status CudnnStatus(cudnnStatus_t status, const char* call, const char* file, int line);

}  // namespace mimo::kernels

// Returns from the enclosing function with a Status if the cuDNN call fails.
#define MIMO_CUDNN_RETURN_IF_ERROR(call) \
  MIMO_RETURN_IF_ERROR(::mimo::kernels::CudnnStatus((call), #call, __FILE__, __LINE__))
