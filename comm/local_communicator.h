// The communicator of a one-member group: every collective is a local copy, no peers, no transport.
#pragma once

#include <atomic>
#include <string>

#include "comm/communicator.h"

namespace mimo::comm {

// Host memory only (the copies are memcpy). Send and Recv fail: there is no other member.
class LocalCommunicator : public Communicator {
 public:
  // `kind` and `global_rank` only name the group in error messages.
  LocalCommunicator(std::string kind, int global_rank);

  int rank() const override { return 0; }
  int size() const override { return 1; }

  absl::Status AllReduce(void* data, size_t count, DataType type, ReduceOp op) override;
  absl::Status ReduceScatter(const void* input, void* output, size_t count, DataType type,
                             ReduceOp op) override;
  absl::Status AllGather(const void* input, void* output, size_t count, DataType type) override;
  absl::Status AllToAll(const void* input, absl::Span<const size_t> send_counts, void* output,
                        absl::Span<const size_t> recv_counts, DataType type) override;
  absl::Status Broadcast(void* data, size_t count, DataType type, int root) override;
  absl::Status Send(const void* data, size_t count, DataType type, int peer) override;
  absl::Status Recv(void* data, size_t count, DataType type, int peer) override;
  absl::Status Barrier() override;
  void Abort() override;

 private:
  // Cancelled after Abort(), else OK.
  absl::Status CheckNotAborted(absl::string_view op) const;
  // Prefixes `status` with the operation and the group.
  absl::Status Annotate(absl::string_view op, const absl::Status& status) const;
  // Copies `count` elements unless source and destination are the same buffer.
  static void Copy(const void* from, void* to, size_t count, DataType type);

  const std::string kind_;
  const int global_rank_;
  std::atomic<bool> aborted_{false};
};

}  // namespace mimo::comm
