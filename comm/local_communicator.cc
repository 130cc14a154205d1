// The communicator of a one-member group: every collective is a local copy.
#include "comm/local_communicator.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "comm/call_checks.h"
#include "common/status_macros.h"

namespace mimo::comm {

LocalCommunicator::LocalCommunicator(std::string kind, int global_rank)
    : kind_(std::move(kind)), global_rank_(global_rank) {}

absl::Status LocalCommunicator::CheckNotAborted(absl::string_view op) const {
  if (aborted_.load()) {
    return absl::CancelledError(absl::StrCat(op, " on group ", kind_, " [", global_rank_,
                                             "]: the communicator was aborted"));
  }
  return absl::OkStatus();
}

absl::Status LocalCommunicator::Annotate(absl::string_view op, const absl::Status& status) const {
  if (status.ok()) return status;
  return absl::Status(status.code(), absl::StrCat(op, " on group ", kind_, " [", global_rank_,
                                                  "] (local): ", status.message()));
}

void LocalCommunicator::Copy(const void* from, void* to, size_t count, DataType type) {
  if (from != to && count > 0) std::memmove(to, from, count * DataTypeSize(type));
}

absl::Status LocalCommunicator::AllReduce(void* data, size_t count, DataType type, ReduceOp op) {
  MIMO_RETURN_IF_ERROR(CheckNotAborted("all-reduce"));
  absl::Status status = CheckDataType(type);
  if (status.ok()) status = CheckReduceOp(op);
  if (status.ok()) status = CheckBuffer(data, count, "data");
  // The reduction over one member is its own data.
  return Annotate("all-reduce", status);
}

absl::Status LocalCommunicator::ReduceScatter(const void* input, void* output, size_t count,
                                              DataType type, ReduceOp op) {
  MIMO_RETURN_IF_ERROR(CheckNotAborted("reduce-scatter"));
  absl::Status status = CheckDataType(type);
  if (status.ok()) status = CheckReduceOp(op);
  if (status.ok()) status = CheckBuffer(input, count, "input");
  if (status.ok()) status = CheckBuffer(output, count, "output");
  if (status.ok()) Copy(input, output, count, type);
  return Annotate("reduce-scatter", status);
}

absl::Status LocalCommunicator::AllGather(const void* input, void* output, size_t count,
                                          DataType type) {
  MIMO_RETURN_IF_ERROR(CheckNotAborted("all-gather"));
  absl::Status status = CheckDataType(type);
  if (status.ok()) status = CheckBuffer(input, count, "input");
  if (status.ok()) status = CheckBuffer(output, count, "output");
  if (status.ok()) Copy(input, output, count, type);
  return Annotate("all-gather", status);
}

absl::Status LocalCommunicator::AllToAll(const void* input, absl::Span<const size_t> send_counts,
                                         void* output, absl::Span<const size_t> recv_counts,
                                         DataType type) {
  MIMO_RETURN_IF_ERROR(CheckNotAborted("all-to-all"));
  size_t send_total = 0, recv_total = 0;
  absl::Status status = CheckDataType(type);
  if (status.ok()) {
    status = CheckAllToAll(input, send_counts, output, recv_counts, 1, &send_total, &recv_total);
  }
  if (status.ok() && send_total != recv_total) {
    status = absl::InvalidArgumentError(
        absl::StrCat("sends ", send_total, " elements to itself but receives ", recv_total));
  }
  if (status.ok()) Copy(input, output, send_total, type);
  return Annotate("all-to-all", status);
}

absl::Status LocalCommunicator::Broadcast(void* data, size_t count, DataType type, int root) {
  MIMO_RETURN_IF_ERROR(CheckNotAborted("broadcast"));
  absl::Status status = CheckDataType(type);
  if (status.ok()) status = CheckRoot(root, 1);
  if (status.ok()) status = CheckBuffer(data, count, "data");
  return Annotate("broadcast", status);
}

absl::Status LocalCommunicator::Send(const void* data, size_t count, DataType type, int peer) {
  MIMO_RETURN_IF_ERROR(CheckNotAborted("send"));
  absl::Status status = CheckDataType(type);
  if (status.ok()) status = CheckBuffer(data, count, "data");
  if (status.ok()) status = CheckPeer(peer, 0, 1);
  return Annotate("send", status);
}

absl::Status LocalCommunicator::Recv(void* data, size_t count, DataType type, int peer) {
  MIMO_RETURN_IF_ERROR(CheckNotAborted("recv"));
  absl::Status status = CheckDataType(type);
  if (status.ok()) status = CheckBuffer(data, count, "data");
  if (status.ok()) status = CheckPeer(peer, 0, 1);
  return Annotate("recv", status);
}

absl::Status LocalCommunicator::Barrier() { return CheckNotAborted("barrier"); }

void LocalCommunicator::Abort() { aborted_.store(true); }

}  // namespace mimo::comm
