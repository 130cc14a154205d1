// The communicator of a one-member group: every collective is a local copy.
#include "comm/local_communicator.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "comm/call_checks.h"

namespace mimo::comm {

LocalCommunicator::LocalCommunicator(std::string kind, int global_rank)
    : CheckedCommunicator(absl::StrCat("group ", GroupName(kind, {global_rank}), " (local)")),
      group_(absl::StrCat("group ", GroupName(kind, {global_rank}))) {}

std::string LocalCommunicator::CallName(absl::string_view op, absl::string_view /*args*/) const {
  return std::string(op);
}

absl::Status LocalCommunicator::CheckUsable(absl::string_view name) {
  if (aborted_.load()) return AbortedError(name, group_);
  return absl::OkStatus();
}

absl::Status LocalCommunicator::CheckPointToPoint(const void* data, size_t count, DataType type,
                                                  int peer) const {
  return FirstFailure(
      {CheckDataType(type), CheckBuffer(data, count, "data"), CheckPeer(peer, rank(), size())});
}

void LocalCommunicator::Copy(const void* from, void* to, size_t count, DataType type) {
  if (from != to && count > 0) std::memmove(to, from, count * DataTypeSize(type));
}

absl::Status LocalCommunicator::DoAllReduce(absl::string_view, void*, size_t, DataType, ReduceOp) {
  return absl::OkStatus();
}

absl::Status LocalCommunicator::DoReduceScatter(absl::string_view, const void* input, void* output,
                                                size_t count, DataType type, ReduceOp) {
  Copy(input, output, count, type);
  return absl::OkStatus();
}

absl::Status LocalCommunicator::DoAllGather(absl::string_view, const void* input, void* output,
                                            size_t count, DataType type) {
  Copy(input, output, count, type);
  return absl::OkStatus();
}

absl::Status LocalCommunicator::DoAllToAll(absl::string_view, const void* input,
                                           absl::Span<const size_t>, size_t send_total,
                                           void* output, absl::Span<const size_t>, size_t,
                                           DataType type) {
  Copy(input, output, send_total, type);
  return absl::OkStatus();
}

absl::Status LocalCommunicator::DoBroadcast(absl::string_view, void*, size_t, DataType, int) {
  return absl::OkStatus();
}

absl::Status LocalCommunicator::DoSend(absl::string_view name, const void*, size_t, DataType, int) {
  return CallError(absl::StatusCode::kInternal, name, ": a one-member group has no peer");
}

absl::Status LocalCommunicator::DoRecv(absl::string_view name, void*, size_t, DataType, int) {
  return CallError(absl::StatusCode::kInternal, name, ": a one-member group has no peer");
}

absl::Status LocalCommunicator::DoBarrier(absl::string_view) { return absl::OkStatus(); }

void LocalCommunicator::Abort() { aborted_.store(true); }

}  // namespace mimo::comm
