// A Communicator over Gloo's TCP transport, on host memory: the CPU path of every process group.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "comm/checked_communicator.h"
#include "comm/gloo_abort.h"
#include "comm/key_value_store.h"

namespace gloo {
class Context;
namespace transport {
class Device;
}  // namespace transport
}  // namespace gloo

namespace mimo::comm {

class GlooPairWatcher;

// float32, int32 and int64 support every call. bfloat16 too: data movement is byte copies, and
// reductions run on the host in float32, rounding every partial result to bfloat16 (nearest, ties
// to even), so a sum over more than two members may differ from a float32 sum rounded once.
//
// ReduceScatter is an all-reduce of the whole input followed by a local slice: twice the traffic
// of a true reduce-scatter, but it rides on Gloo's tested ring all-reduce. AllToAll first swaps
// the counts with every peer (one small extra exchange) so that a count mismatch fails with
// InvalidArgument instead of tripping a check on Gloo's I/O thread, which would end the process.
// Every call waits at most the group's timeout for its peers, and fails (Unavailable) soon after
// the connections with the members it waits on have closed.
class GlooCommunicator : public CheckedCommunicator {
 public:
  // One TCP device (a listening address and an I/O thread) for all of a process's groups.
  // `hostname` is the address peers reach this process on; "" means the host name's address.
  // Also makes the process ignore SIGPIPE (unless it has a handler), so that writing to a peer
  // that went away fails the call instead of killing the process.
  static absl::StatusOr<std::shared_ptr<gloo::transport::Device>> CreateTcpDevice(
      const std::string& hostname);

  // Connects this process, member `group_rank` of `members` (global ranks), to every other member
  // of the group `kind`, exchanging addresses through `store` under GroupStorePrefix. Needs at
  // least two members. Fails with the store's DeadlineExceeded (naming the missing keys) when a
  // member does not show up within `timeout`, which also bounds every later call.
  static absl::StatusOr<std::unique_ptr<GlooCommunicator>> Connect(
      std::string kind, std::vector<int> members, int group_rank, KeyValueStore& store,
      std::shared_ptr<gloo::transport::Device> device, absl::Duration timeout);

  ~GlooCommunicator() override;

  int rank() const override { return rank_; }
  int size() const override { return size_; }

  // Shuts down every connection of the group (see ShutDownGlooSockets): a call blocked in
  // another thread returns Cancelled within milliseconds, later calls fail with Cancelled, and
  // the peers' calls fail (Unavailable) as their connections close.
  void Abort() override;

 private:
  GlooCommunicator(std::shared_ptr<gloo::Context> context, absl::string_view kind,
                   const std::vector<int>& members);

  // Cancelled after Abort(), the failure that broke the communicator, else OK.
  absl::Status CheckUsable(absl::string_view name) override;
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
  absl::Status DoSend(absl::string_view name, const void* data, size_t count, DataType type,
                      int peer) override;
  absl::Status DoRecv(absl::string_view name, void* data, size_t count, DataType type,
                      int peer) override;
  absl::Status DoBarrier(absl::string_view name) override;

  // Runs a Gloo call; a failure (Cancelled after Abort) breaks the communicator for good.
  template <typename Fn>
  absl::Status Run(absl::string_view name, Fn&& fn);
  // Inside Run: all-reduces `count` elements of `type` at `data` over the group, in place.
  void AllReduceInPlace(void* data, size_t count, DataType type, ReduceOp op);
  // Makes the communicator fail every later call with `status` (the first one stays) and closes
  // its connections, so that the other members' calls fail too.
  void Break(const absl::Status& status);
  // An unbound buffer over `bytes` bytes at `data` for a call to hand to Gloo, abortable by
  // Abort() (see AbortableBuffers).
  std::unique_ptr<gloo::transport::UnboundBuffer> Buffer(const void* data, size_t bytes);

  const std::shared_ptr<gloo::Context> context_;
  const int rank_;
  const int size_;
  std::atomic<bool> aborted_{false};
  // Every unbound buffer a call hands to Gloo, so that Abort wakes the call's waits directly.
  AbortableBuffers buffers_;
  absl::Mutex mu_;
  absl::Status broken_ ABSL_GUARDED_BY(mu_);
  // Tells buffers_ of every pair that fails, so that a wait that nothing can complete any more
  // fails at once (see AbortableBuffers). Last: stopped before what it uses goes.
  std::unique_ptr<GlooPairWatcher> watcher_;
};

}  // namespace mimo::comm
