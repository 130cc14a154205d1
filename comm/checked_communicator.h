// What every Communicator call does before its transport: naming, usability and argument checks.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "comm/communicator.h"

namespace mimo::comm {

// "tp [4,5]": how messages name the group `kind` of `members` (global ranks).
std::string GroupName(absl::string_view kind, const std::vector<int>& members);
// "group tp [4,5] as member 0 of 2": how a member's messages name its group.
std::string MemberDescription(absl::string_view kind, const std::vector<int>& members, int rank);

// The base of every implementation. Each public call, in this order: names itself (CallName),
// fails with CheckUsable's error, fails with InvalidArgument "NAME on DESCRIPTION: why" when an
// argument is bad (call_checks), returns OK when there is nothing to move, and only then hands
// over to its Do* method. Every error of a call reads "NAME on GROUP...", GROUP most often being
// the description given to the constructor.
class CheckedCommunicator : public Communicator {
 public:
  absl::Status AllReduce(void* data, size_t count, DataType type, ReduceOp op) final;
  absl::Status ReduceScatter(const void* input, void* output, size_t count, DataType type,
                             ReduceOp op) final;
  absl::Status AllGather(const void* input, void* output, size_t count, DataType type) final;
  absl::Status AllToAll(const void* input, absl::Span<const size_t> send_counts, void* output,
                        absl::Span<const size_t> recv_counts, DataType type) final;
  absl::Status Broadcast(void* data, size_t count, DataType type, int root) final;
  absl::Status Send(const void* data, size_t count, DataType type, int peer) final;
  absl::Status Recv(void* data, size_t count, DataType type, int peer) final;
  absl::Status Barrier() final;

 protected:
  // `description` names the group in messages: "group tp [4,5] as member 0 of 2".
  explicit CheckedCommunicator(std::string description);

  const std::string& description() const { return description_; }

  // `code` with "NAME on DESCRIPTION" followed by `rest` (": why", " failed: why"): the shape of
  // every error of the call named `name`.
  absl::Status CallError(absl::StatusCode code, absl::string_view name,
                         absl::string_view rest) const;
  // Cancelled: "NAME on GROUP: the communicator was aborted"; GROUP is description() unless given.
  static absl::Status AbortedError(absl::string_view name, absl::string_view group);
  absl::Status AbortedError(absl::string_view name) const;
  // OK while `broken` is; else its code with "NAME on DESCRIPTION: unusable after an earlier
  // failure: " and its message.
  absl::Status BrokenError(absl::string_view name, const absl::Status& broken) const;
  // `failure`'s code with "NAME on DESCRIPTION failed: " and its message.
  absl::Status FailedError(absl::string_view name, const absl::Status& failure) const;

  // The call's name in messages, from its operation ("all-reduce") and arguments ("sum, float32,
  // 5 elements"): "all-reduce(sum, float32, 5 elements)". Barrier is named "barrier".
  virtual std::string CallName(absl::string_view op, absl::string_view args) const;
  // Fails when no call may start: Cancelled after Abort(), or for good after a failure.
  virtual absl::Status CheckUsable(absl::string_view name) = 0;
  // The argument checks of Send and Recv: the data type, then the peer, then the buffer.
  virtual absl::Status CheckPointToPoint(const void* data, size_t count, DataType type,
                                         int peer) const;

  // The transport's part of each call, named `name` in messages, with arguments checked and
  // counts above zero. AllToAll gets the totals of the counts, which may both be zero.
  virtual absl::Status DoAllReduce(absl::string_view name, void* data, size_t count, DataType type,
                                   ReduceOp op) = 0;
  virtual absl::Status DoReduceScatter(absl::string_view name, const void* input, void* output,
                                       size_t count, DataType type, ReduceOp op) = 0;
  virtual absl::Status DoAllGather(absl::string_view name, const void* input, void* output,
                                   size_t count, DataType type) = 0;
  virtual absl::Status DoAllToAll(absl::string_view name, const void* input,
                                  absl::Span<const size_t> send_counts, size_t send_total,
                                  void* output, absl::Span<const size_t> recv_counts,
                                  size_t recv_total, DataType type) = 0;
  virtual absl::Status DoBroadcast(absl::string_view name, void* data, size_t count, DataType type,
                                   int root) = 0;
  virtual absl::Status DoSend(absl::string_view name, const void* data, size_t count, DataType type,
                              int peer) = 0;
  virtual absl::Status DoRecv(absl::string_view name, void* data, size_t count, DataType type,
                              int peer) = 0;
  virtual absl::Status DoBarrier(absl::string_view name) = 0;

 private:
  // CheckUsable's error, else `args` (an argument check's result) as "NAME on DESCRIPTION: why".
  absl::Status Admit(absl::string_view name, const absl::Status& args);

  const std::string description_;
};

}  // namespace mimo::comm
