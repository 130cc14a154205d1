// Turns NCCL results into absl::Status naming the failing call, its location and NCCL's reason.
#pragma once

#include <nccl.h>

#include "absl/status/status.h"
#include "common/status_macros.h"

namespace mimo::comm {

// OK for ncclSuccess, and for ncclInProgress (a nonblocking communicator's "posted, still
// running"; the caller then polls ncclCommGetAsyncError). Otherwise an error whose message reads
// "file.cc:42: ncclAllReduce(...) failed: unhandled system error (<ncclGetLastError>)":
// Unavailable for system and remote errors (a peer or the network went away), InvalidArgument
// and FailedPrecondition for bad arguments and usage, Internal for the rest. `comm` may be null.
absl::Status NcclStatus(ncclResult_t result, ncclComm_t comm, const char* call, const char* file,
                        int line);

}  // namespace mimo::comm

// Returns from the enclosing function with a Status if the NCCL call fails.
#define MIMO_NCCL_RETURN_IF_ERROR(comm, call) \
  MIMO_RETURN_IF_ERROR(::mimo::comm::NcclStatus((call), (comm), #call, __FILE__, __LINE__))
