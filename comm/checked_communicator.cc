// What every Communicator call does before its transport.
#include "comm/checked_communicator.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "comm/call_checks.h"
#include "common/status_macros.h"

namespace mimo::comm {
namespace {

absl::Status OnGroup(absl::StatusCode code, absl::string_view name, absl::string_view group,
                     absl::string_view rest) {
  return absl::Status(code, absl::StrCat(name, " on ", group, rest));
}

}  // namespace

std::string GroupName(absl::string_view kind, const std::vector<int>& members) {
  return absl::StrCat(kind, " [", absl::StrJoin(members, ","), "]");
}

std::string MemberDescription(absl::string_view kind, const std::vector<int>& members, int rank) {
  return absl::StrCat("group ", GroupName(kind, members), " as member ", rank, " of ",
                      members.size());
}

CheckedCommunicator::CheckedCommunicator(std::string description)
    : description_(std::move(description)) {}

absl::Status CheckedCommunicator::CallError(absl::StatusCode code, absl::string_view name,
                                            absl::string_view rest) const {
  return OnGroup(code, name, description_, rest);
}

absl::Status CheckedCommunicator::AbortedError(absl::string_view name, absl::string_view group) {
  return OnGroup(absl::StatusCode::kCancelled, name, group, ": the communicator was aborted");
}

absl::Status CheckedCommunicator::AbortedError(absl::string_view name) const {
  return AbortedError(name, description_);
}

absl::Status CheckedCommunicator::BrokenError(absl::string_view name,
                                              const absl::Status& broken) const {
  if (broken.ok()) return broken;
  return CallError(broken.code(), name,
                   absl::StrCat(": unusable after an earlier failure: ", broken.message()));
}

absl::Status CheckedCommunicator::FailedError(absl::string_view name,
                                              const absl::Status& failure) const {
  return CallError(failure.code(), name, absl::StrCat(" failed: ", failure.message()));
}

std::string CheckedCommunicator::CallName(absl::string_view op, absl::string_view args) const {
  return absl::StrCat(op, "(", args, ")");
}

absl::Status CheckedCommunicator::CheckPointToPoint(const void* data, size_t count, DataType type,
                                                    int peer) const {
  return FirstFailure(
      {CheckDataType(type), CheckPeer(peer, rank(), size()), CheckBuffer(data, count, "data")});
}

absl::Status CheckedCommunicator::Admit(absl::string_view name, const absl::Status& args) {
  MIMO_RETURN_IF_ERROR(CheckUsable(name));
  if (args.ok()) return args;
  return CallError(args.code(), name, absl::StrCat(": ", args.message()));
}

absl::Status CheckedCommunicator::AllReduce(void* data, size_t count, DataType type, ReduceOp op) {
  const std::string name =
      CallName("all-reduce",
               absl::StrCat(ReduceOpName(op), ", ", DataTypeName(type), ", ", count, " elements"));
  MIMO_RETURN_IF_ERROR(Admit(name, FirstFailure({CheckDataType(type), CheckReduceOp(op),
                                                 CheckBuffer(data, count, "data")})));
  if (count == 0) return absl::OkStatus();
  return DoAllReduce(name, data, count, type, op);
}

absl::Status CheckedCommunicator::ReduceScatter(const void* input, void* output, size_t count,
                                                DataType type, ReduceOp op) {
  const std::string name =
      CallName("reduce-scatter",
               absl::StrCat(ReduceOpName(op), ", ", DataTypeName(type), ", ", count, " elements"));
  MIMO_RETURN_IF_ERROR(Admit(name, FirstFailure({CheckDataType(type), CheckReduceOp(op),
                                                 CheckBuffer(input, count, "input"),
                                                 CheckBuffer(output, count, "output")})));
  if (count == 0) return absl::OkStatus();
  return DoReduceScatter(name, input, output, count, type, op);
}

absl::Status CheckedCommunicator::AllGather(const void* input, void* output, size_t count,
                                            DataType type) {
  const std::string name =
      CallName("all-gather", absl::StrCat(DataTypeName(type), ", ", count, " elements"));
  MIMO_RETURN_IF_ERROR(
      Admit(name, FirstFailure({CheckDataType(type), CheckBuffer(input, count, "input"),
                                CheckBuffer(output, count, "output")})));
  if (count == 0) return absl::OkStatus();
  return DoAllGather(name, input, output, count, type);
}

absl::Status CheckedCommunicator::AllToAll(const void* input, absl::Span<const size_t> send_counts,
                                           void* output, absl::Span<const size_t> recv_counts,
                                           DataType type) {
  const std::string name = CallName("all-to-all", DataTypeName(type));
  size_t send_total = 0, recv_total = 0;
  absl::Status args = CheckDataType(type);
  if (args.ok()) {
    args = CheckAllToAll(input, send_counts, output, recv_counts, size(), &send_total, &recv_total);
  }
  if (args.ok() && send_counts[rank()] != recv_counts[rank()]) {
    args = absl::InvalidArgumentError(absl::StrCat(
        "sends ", send_counts[rank()], " elements to itself but receives ", recv_counts[rank()]));
  }
  MIMO_RETURN_IF_ERROR(Admit(name, args));
  return DoAllToAll(name, input, send_counts, send_total, output, recv_counts, recv_total, type);
}

absl::Status CheckedCommunicator::Broadcast(void* data, size_t count, DataType type, int root) {
  const std::string name = CallName(
      "broadcast", absl::StrCat(DataTypeName(type), ", ", count, " elements, root ", root));
  MIMO_RETURN_IF_ERROR(Admit(name, FirstFailure({CheckDataType(type), CheckRoot(root, size()),
                                                 CheckBuffer(data, count, "data")})));
  if (count == 0) return absl::OkStatus();
  return DoBroadcast(name, data, count, type, root);
}

absl::Status CheckedCommunicator::Send(const void* data, size_t count, DataType type, int peer) {
  const std::string name = CallName(
      "send", absl::StrCat(DataTypeName(type), ", ", count, " elements, to member ", peer));
  MIMO_RETURN_IF_ERROR(Admit(name, CheckPointToPoint(data, count, type, peer)));
  if (count == 0) return absl::OkStatus();
  return DoSend(name, data, count, type, peer);
}

absl::Status CheckedCommunicator::Recv(void* data, size_t count, DataType type, int peer) {
  const std::string name = CallName(
      "recv", absl::StrCat(DataTypeName(type), ", ", count, " elements, from member ", peer));
  MIMO_RETURN_IF_ERROR(Admit(name, CheckPointToPoint(data, count, type, peer)));
  if (count == 0) return absl::OkStatus();
  return DoRecv(name, data, count, type, peer);
}

absl::Status CheckedCommunicator::Barrier() {
  MIMO_RETURN_IF_ERROR(CheckUsable("barrier"));
  return DoBarrier("barrier");
}

}  // namespace mimo::comm
