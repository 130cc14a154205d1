// Argument checks shared by every Communicator.
#include "comm/call_checks.h"

#include "absl/strings/str_cat.h"

namespace mimo::comm {

absl::Status FirstFailure(std::initializer_list<absl::Status> checks) {
  for (const absl::Status& check : checks) {
    if (!check.ok()) return check;
  }
  return absl::OkStatus();
}

absl::Status CheckDataType(DataType type) {
  if (DataTypeSize(type) == 0) {
    return absl::InvalidArgumentError(absl::StrCat("invalid data type ", static_cast<int>(type)));
  }
  return absl::OkStatus();
}

absl::Status CheckReduceOp(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kMax:
    case ReduceOp::kMin:
      return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrCat("invalid reduce op ", static_cast<int>(op)));
}

absl::Status CheckBuffer(const void* data, size_t count, absl::string_view name) {
  if (data == nullptr && count > 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, " is null but ", count, " elements are to be moved"));
  }
  return absl::OkStatus();
}

absl::Status CheckRoot(int root, int size) {
  if (root < 0 || root >= size) {
    return absl::InvalidArgumentError(
        absl::StrCat("root ", root, " is outside the group of ", size));
  }
  return absl::OkStatus();
}

absl::Status CheckPeer(int peer, int rank, int size) {
  if (peer < 0 || peer >= size) {
    return absl::InvalidArgumentError(
        absl::StrCat("peer ", peer, " is outside the group of ", size));
  }
  if (peer == rank) {
    return absl::InvalidArgumentError(
        absl::StrCat("peer ", peer, " is this member itself; send and receive need another"));
  }
  return absl::OkStatus();
}

absl::Status CheckAllToAll(const void* input, absl::Span<const size_t> send_counts,
                           const void* output, absl::Span<const size_t> recv_counts, int size,
                           size_t* send_total, size_t* recv_total) {
  if (send_counts.size() != static_cast<size_t>(size) ||
      recv_counts.size() != static_cast<size_t>(size)) {
    return absl::InvalidArgumentError(
        absl::StrCat("all-to-all needs one count per member (", size, "), got ", send_counts.size(),
                     " send counts and ", recv_counts.size(), " receive counts"));
  }
  *send_total = 0;
  *recv_total = 0;
  for (size_t c : send_counts) *send_total += c;
  for (size_t c : recv_counts) *recv_total += c;
  if (absl::Status s = CheckBuffer(input, *send_total, "all-to-all input"); !s.ok()) return s;
  return CheckBuffer(output, *recv_total, "all-to-all output");
}

}  // namespace mimo::comm
