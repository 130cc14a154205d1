// The communicator of a one-member group: every collective is a local copy, no peers, no transport.
#pragma once

#include <atomic>
#include <string>

#include "comm/checked_communicator.h"

namespace mimo::comm {

// Host memory only (the copies are memcpy). Send and Recv fail: there is no other member. Calls
// are named by their operation alone ("all-reduce"), argument errors name the group as "group tp
// [3] (local)", and calls after Abort() as "group tp [3]".
class LocalCommunicator : public CheckedCommunicator {
 public:
  // `kind` and `global_rank` only name the group in error messages.
  LocalCommunicator(std::string kind, int global_rank);

  int rank() const override { return 0; }
  int size() const override { return 1; }

  void Abort() override;

 private:
  // "all-reduce": the operation without its arguments.
  std::string CallName(absl::string_view op, absl::string_view args) const override;
  // Cancelled after Abort(), else OK.
  absl::Status CheckUsable(absl::string_view name) override;
  // The data type, then the buffer, then the peer (which no peer passes).
  absl::Status CheckPointToPoint(const void* data, size_t count, DataType type,
                                 int peer) const override;

  // The reduction over one member is its own data.
  absl::Status DoAllReduce(absl::string_view name, void* data, size_t count, DataType type,
                           ReduceOp op) override;
  absl::Status DoReduceScatter(absl::string_view name, const void* input, void* output,
                               size_t count, DataType type, ReduceOp op) override;
  absl::Status DoAllGather(absl::string_view name, const void* input, void* output, size_t count,
                           DataType type) override;
  absl::Status DoAllToAll(absl::string_view name, const void* input,
                          absl::Span<const size_t> send_counts, size_t send_total, void* output,
                          absl::Span<const size_t> recv_counts, size_t recv_total,
                          DataType type) override;
  absl::Status DoBroadcast(absl::string_view name, void* data, size_t count, DataType type,
                           int root) override;
  // Never called: CheckPeer refuses every peer of a one-member group.
  absl::Status DoSend(absl::string_view name, const void* data, size_t count, DataType type,
                      int peer) override;
  absl::Status DoRecv(absl::string_view name, void* data, size_t count, DataType type,
                      int peer) override;
  absl::Status DoBarrier(absl::string_view name) override;

  // Copies `count` elements unless source and destination are the same buffer.
  static void Copy(const void* from, void* to, size_t count, DataType type);

  // "group tp [3]", for calls after Abort().
  const std::string group_;
  std::atomic<bool> aborted_{false};
};

}  // namespace mimo::comm
