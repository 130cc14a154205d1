// Argument checks shared by every Communicator, so each rejects a bad call the same way, before
// anything reaches its transport (where a mismatch would hang or corrupt the peers instead).
#pragma once

#include <cstddef>
#include <initializer_list>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "comm/communicator.h"

namespace mimo::comm {

// The first failure among `checks` (results of the checks below), else OK.
absl::Status FirstFailure(std::initializer_list<absl::Status> checks);

// InvalidArgument unless `type` is a DataType value.
absl::Status CheckDataType(DataType type);
// InvalidArgument unless `op` is a ReduceOp value.
absl::Status CheckReduceOp(ReduceOp op);
// InvalidArgument when `data` (named `name`) is null but `count` elements are to be moved.
absl::Status CheckBuffer(const void* data, size_t count, absl::string_view name);
// InvalidArgument unless 0 <= root < size.
absl::Status CheckRoot(int root, int size);
// InvalidArgument unless `peer` is another member of a group of `size` (this member is `rank`).
absl::Status CheckPeer(int peer, int rank, int size);
// InvalidArgument unless both count spans have one entry per member, and the buffers are non-null
// where their counts add up to more than zero. On success stores the totals.
absl::Status CheckAllToAll(const void* input, absl::Span<const size_t> send_counts,
                           const void* output, absl::Span<const size_t> recv_counts, int size,
                           size_t* send_total, size_t* recv_total);

}  // namespace mimo::comm
