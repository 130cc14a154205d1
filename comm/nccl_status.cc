// Turns NCCL results into absl::Status naming the failing call, its location and NCCL's reason.
#include "comm/nccl_status.h"

#include "absl/strings/str_cat.h"

namespace mimo::comm {

absl::Status NcclStatus(ncclResult_t result, ncclComm_t comm, const char* call, const char* file,
                        int line) {
  if (result == ncclSuccess || result == ncclInProgress) return absl::OkStatus();
  const char* last = ncclGetLastError(comm);
  const std::string message =
      absl::StrCat(file, ":", line, ": ", call, " failed: ", ncclGetErrorString(result),
                   last != nullptr && last[0] != '\0' ? absl::StrCat(" (", last, ")") : "");
  switch (result) {
    case ncclSystemError:
    case ncclRemoteError:
      return absl::UnavailableError(message);
    case ncclInvalidArgument:
      return absl::InvalidArgumentError(message);
    case ncclInvalidUsage:
      return absl::FailedPreconditionError(message);
    default:
      return absl::InternalError(message);
  }
}

}  // namespace mimo::comm
