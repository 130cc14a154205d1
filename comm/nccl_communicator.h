// A Communicator over NCCL on one CUDA device: the GPU path of every process group.
#pragma once

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "comm/checked_communicator.h"
#include "comm/key_value_store.h"

namespace mimo::comm {

// Buffers are device memory on the communicator's device. float32, bfloat16, int32 and int64
// support every call, reductions included (NCCL reduces bfloat16 natively).
//
// The communicator is nonblocking (ncclConfig_t::blocking = 0) and every call waits for its work
// to finish on the device before returning, polling ncclCommGetAsyncError and an event on the
// communicator's stream: a dead or absent peer makes the call fail (DeadlineExceeded after the
// group's timeout, or NCCL's error) and aborts the communicator, instead of hanging the process.
// The price is that calls do not overlap with other work on the host. AllToAll does not check the
// peers' counts (NCCL does not): a member expecting more than its peer sends ends in the timeout,
// but one expecting less may return OK with the message cut short (NVIDIA/nccl#1938; across
// nodes NCCL may report a truncated message), where Gloo refuses the mismatch. Barrier is a
// one-element all-reduce.
class NcclCommunicator : public CheckedCommunicator {
 public:
  // Connects member `group_rank` of `members` (global ranks) of the group `kind` on CUDA device
  // `cuda_device`: member 0 publishes a fresh ncclUniqueId under GroupStorePrefix(kind, members)
  // and the others wait for it (up to `timeout`); then every member initializes its rank, within
  // `timeout` too. A group of one member needs no peers.
  static absl::StatusOr<std::unique_ptr<NcclCommunicator>> Connect(
      std::string kind, std::vector<int> members, int group_rank, KeyValueStore& store,
      int cuda_device, absl::Duration timeout);

  // Finalizes and destroys the NCCL communicator (aborting it if that does not finish within the
  // timeout), then frees the stream and buffers.
  ~NcclCommunicator() override;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  // The stream every call runs on; idle whenever no call is in progress.
  cudaStream_t stream() const { return stream_; }
  int cuda_device() const { return device_; }

  // ncclCommAbort: kernels in flight stop, and a call waiting in another thread returns
  // Cancelled at its next poll (within about a millisecond).
  void Abort() override;

 private:
  NcclCommunicator(absl::string_view kind, const std::vector<int>& members, int rank, int device,
                   absl::Duration timeout);

  // Creates the stream and buffers and initializes the NCCL rank, within the timeout.
  absl::Status Init(const ncclUniqueId& id);
  // Cancelled after Abort(), the first failure after one, else OK.
  absl::Status CheckUsable(absl::string_view name) override;
  absl::Status DoAllReduce(absl::string_view name, void* data, size_t count, DataType type,
                           ReduceOp op) override;
  absl::Status DoReduceScatter(absl::string_view name, const void* input, void* output,
                               size_t count, DataType type, ReduceOp op) override;
  absl::Status DoAllGather(absl::string_view name, const void* input, void* output, size_t count,
                           DataType type) override;
  // Returns at once when this member neither sends nor receives anything.
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

  // Enqueues work with `enqueue(comm, stream)` and waits for it as described above.
  template <typename Enqueue>
  absl::Status Run(absl::string_view name, Enqueue&& enqueue);
  // Aborts the NCCL communicator; mu_ must be held.
  void AbortLocked();

  const int rank_;
  const int size_;
  const int device_;
  const absl::Duration timeout_;

  // Guards the NCCL handle: a call holds it while it enqueues or polls, never while it sleeps,
  // so that Abort() from another thread gets in between polls.
  std::mutex mu_;
  ncclComm_t comm_ = nullptr;  // Null once aborted.
  absl::Status broken_;        // The first failure; every later call fails with it.
  std::atomic<bool> abort_requested_{false};

  cudaStream_t stream_ = nullptr;
  cudaEvent_t done_ = nullptr;
  int* scratch_ = nullptr;  // One device int for Barrier.
};

}  // namespace mimo::comm
