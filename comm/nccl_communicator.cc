// A Communicator over NCCL on one CUDA device.
#include "comm/nccl_communicator.h"

#include <cstring>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "comm/call_checks.h"
#include "comm/cuda_device_guard.h"
#include "comm/nccl_status.h"
#include "kernels/cuda_status.h"

namespace mimo::comm {
namespace {

ncclDataType_t NcclType(DataType type) {
  switch (type) {
    case DataType::kFloat32:
      return ncclFloat32;
    case DataType::kBFloat16:
      return ncclBfloat16;
    case DataType::kInt32:
      return ncclInt32;
    case DataType::kInt64:
      return ncclInt64;
  }
  return ncclFloat32;  // Unreachable: callers check the type first.
}

ncclRedOp_t NcclOp(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return ncclSum;
    case ReduceOp::kMax:
      return ncclMax;
    case ReduceOp::kMin:
      return ncclMin;
  }
  return ncclSum;  // Unreachable: callers check the op first.
}

// Between polls: spin politely at first (most calls finish within microseconds), then sleep so a
// long wait does not burn a core.
void Pause(int poll) {
  if (poll < 2000) {
    std::this_thread::yield();
  } else {
    absl::SleepFor(absl::Microseconds(100));
  }
}

const char* At(const void* base, size_t elements, DataType type) {
  return static_cast<const char*>(base) + elements * DataTypeSize(type);
}

}  // namespace

absl::StatusOr<std::unique_ptr<NcclCommunicator>> NcclCommunicator::Connect(
    std::string kind, std::vector<int> members, int group_rank, KeyValueStore& store,
    int cuda_device, absl::Duration timeout) {
  const std::string group = absl::StrCat(kind, " [", absl::StrJoin(members, ","), "]");
  const int size = static_cast<int>(members.size());
  if (size < 1 || group_rank < 0 || group_rank >= size) {
    return absl::InvalidArgumentError(
        absl::StrCat("group ", group, ": member index ", group_rank, " is out of range"));
  }
  if (cuda_device < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("group ", group, ": CUDA device ", cuda_device, " is negative"));
  }
  if (timeout < absl::Milliseconds(1)) {
    return absl::InvalidArgumentError(absl::StrCat("group ", group, ": timeout ",
                                                   absl::FormatDuration(timeout), " is under 1ms"));
  }
  auto failed = [&](const absl::Status& status) {
    return absl::Status(status.code(), absl::StrCat("connecting NCCL group ", group, " as member ",
                                                    group_rank, ": ", status.message()));
  };
  // Member 0 makes the id; the store carries it to the others.
  const std::string key = absl::StrCat(GroupStorePrefix(kind, members), "nccl_unique_id");
  ncclUniqueId id;
  if (group_rank == 0) {
    absl::Status status =
        NcclStatus(ncclGetUniqueId(&id), nullptr, "ncclGetUniqueId(&id)", __FILE__, __LINE__);
    if (status.ok()) status = store.Set(key, absl::string_view(id.internal, sizeof(id.internal)));
    if (!status.ok()) return failed(status);
  } else {
    absl::StatusOr<std::vector<std::string>> values = store.Wait({key}, timeout);
    if (!values.ok()) return failed(values.status());
    if ((*values)[0].size() != sizeof(id.internal)) {
      return failed(absl::InvalidArgumentError(
          absl::StrCat("store key ", key, " holds ", (*values)[0].size(), " bytes, not an id")));
    }
    std::memcpy(id.internal, (*values)[0].data(), sizeof(id.internal));
  }
  std::unique_ptr<NcclCommunicator> comm(
      new NcclCommunicator(std::move(kind), std::move(members), group_rank, cuda_device, timeout));
  if (absl::Status status = comm->Init(id); !status.ok()) return failed(status);
  return comm;
}

NcclCommunicator::NcclCommunicator(std::string kind, std::vector<int> members, int rank, int device,
                                   absl::Duration timeout)
    : kind_(std::move(kind)),
      members_(std::move(members)),
      rank_(rank),
      size_(static_cast<int>(members_.size())),
      device_(device),
      timeout_(timeout),
      description_(absl::StrCat("group ", kind_, " [", absl::StrJoin(members_, ","), "] as member ",
                                rank_, " of ", size_, " on CUDA device ", device_)) {}

absl::Status NcclCommunicator::Init(const ncclUniqueId& id) {
  CudaDeviceGuard guard(device_);
  MIMO_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  MIMO_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming));
  MIMO_CUDA_RETURN_IF_ERROR(cudaMalloc(&scratch_, sizeof(int)));
  std::unique_lock<std::mutex> lock(mu_);
  const absl::Time deadline = absl::Now() + timeout_;
  // Nonblocking: the call returns at once and the rendezvous with the peers is polled below, so
  // that a member that never arrives costs the timeout, not the process.
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  absl::Status status =
      NcclStatus(ncclCommInitRankConfig(&comm_, size_, id, rank_, &config), comm_,
                 "ncclCommInitRankConfig(&comm, size, id, rank, &config)", __FILE__, __LINE__);
  for (int poll = 0; status.ok(); ++poll) {
    ncclResult_t state = ncclInProgress;
    status = NcclStatus(ncclCommGetAsyncError(comm_, &state), comm_,
                        "ncclCommGetAsyncError(comm, &state)", __FILE__, __LINE__);
    if (status.ok())
      status = NcclStatus(state, comm_, "ncclCommInitRankConfig", __FILE__, __LINE__);
    if (!status.ok() || state == ncclSuccess) break;
    if (absl::Now() > deadline) {
      status = absl::DeadlineExceededError(
          absl::StrCat("NCCL initialization did not finish within ", absl::FormatDuration(timeout_),
                       " (a member did not join?)"));
      break;
    }
    lock.unlock();
    Pause(poll);
    lock.lock();
  }
  if (!status.ok()) AbortLocked();
  return status;
}

NcclCommunicator::~NcclCommunicator() {
  CudaDeviceGuard guard(device_);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (comm_ != nullptr) {
      // Nothing is in flight (every call waits for its work), so finalizing is quick unless the
      // communicator is wedged; then abort rather than hang the destructor.
      const absl::Time deadline = absl::Now() + timeout_;
      ncclResult_t result = ncclCommFinalize(comm_);
      ncclResult_t state = result;
      while (result == ncclSuccess || result == ncclInProgress) {
        if (ncclCommGetAsyncError(comm_, &state) != ncclSuccess) state = ncclInternalError;
        if (state != ncclInProgress || absl::Now() > deadline) break;
        absl::SleepFor(absl::Microseconds(200));
      }
      if (state == ncclSuccess) {
        ncclCommDestroy(comm_);
        comm_ = nullptr;
      } else {
        AbortLocked();
      }
    }
  }
  if (scratch_ != nullptr) cudaFree(scratch_);
  if (done_ != nullptr) cudaEventDestroy(done_);
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
}

void NcclCommunicator::AbortLocked() {
  if (comm_ == nullptr) return;
  CudaDeviceGuard guard(device_);
  ncclCommAbort(comm_);
  comm_ = nullptr;
}

void NcclCommunicator::Abort() {
  abort_requested_.store(true);
  std::lock_guard<std::mutex> lock(mu_);
  AbortLocked();
}

absl::Status NcclCommunicator::CheckUsable(absl::string_view op) {
  if (abort_requested_.load()) {
    return absl::CancelledError(
        absl::StrCat(op, " on ", description_, ": the communicator was aborted"));
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (!broken_.ok()) {
    return absl::Status(broken_.code(),
                        absl::StrCat(op, " on ", description_,
                                     ": unusable after an earlier failure: ", broken_.message()));
  }
  return absl::OkStatus();
}

absl::Status NcclCommunicator::ArgumentError(absl::string_view op,
                                             const absl::Status& status) const {
  if (status.ok()) return status;
  return absl::Status(status.code(),
                      absl::StrCat(op, " on ", description_, ": ", status.message()));
}

template <typename Enqueue>
absl::Status NcclCommunicator::Run(absl::string_view op, Enqueue&& enqueue) {
  const absl::Time deadline = absl::Now() + timeout_;
  CudaDeviceGuard guard(device_);
  std::unique_lock<std::mutex> lock(mu_);
  // A failure breaks the communicator for good: NCCL says nothing can be assumed about enqueued
  // work after an error, so the only way out is ncclCommAbort.
  auto fail = [&](const absl::Status& status) {
    const absl::Status annotated =
        abort_requested_.load()
            ? absl::CancelledError(absl::StrCat(op, " on ", description_, " was aborted"))
            : absl::Status(status.code(),
                           absl::StrCat(op, " on ", description_, " failed: ", status.message()));
    if (broken_.ok()) broken_ = annotated;
    AbortLocked();
    return annotated;
  };
  if (comm_ == nullptr) {
    return abort_requested_.load()
               ? absl::CancelledError(
                     absl::StrCat(op, " on ", description_, ": the communicator was aborted"))
               : absl::FailedPreconditionError(
                     absl::StrCat(op, " on ", description_, ": not connected"));
  }
  if (absl::Status status = enqueue(comm_, stream_); !status.ok()) return fail(status);
  // Wait until NCCL has posted everything (a nonblocking communicator may still be enqueuing),
  // then until the stream has run it, watching for asynchronous errors and the deadline.
  bool recorded = false;
  for (int poll = 0;; ++poll) {
    if (comm_ == nullptr) {
      return absl::CancelledError(absl::StrCat(op, " on ", description_, " was aborted"));
    }
    ncclResult_t state = ncclInProgress;
    absl::Status status = NcclStatus(ncclCommGetAsyncError(comm_, &state), comm_,
                                     "ncclCommGetAsyncError(comm, &state)", __FILE__, __LINE__);
    if (status.ok())
      status = NcclStatus(state, comm_, "asynchronous NCCL work", __FILE__, __LINE__);
    if (!status.ok()) return fail(status);
    if (state == ncclSuccess) {
      if (!recorded) {
        status = kernels::CudaStatus(cudaEventRecord(done_, stream_),
                                     "cudaEventRecord(done, stream)", __FILE__, __LINE__);
        if (!status.ok()) return fail(status);
        recorded = true;
      }
      const cudaError_t query = cudaEventQuery(done_);
      if (query == cudaSuccess) return absl::OkStatus();
      if (query != cudaErrorNotReady) {
        return fail(kernels::CudaStatus(query, "cudaEventQuery(done)", __FILE__, __LINE__));
      }
    }
    if (absl::Now() > deadline) {
      return fail(absl::DeadlineExceededError(
          absl::StrCat("not done within ", absl::FormatDuration(timeout_),
                       " (a member did not make the matching call, or died)")));
    }
    // Let Abort() in between polls.
    lock.unlock();
    Pause(poll);
    lock.lock();
  }
}

absl::Status NcclCommunicator::AllReduce(void* data, size_t count, DataType type, ReduceOp op) {
  const std::string name = absl::StrCat("all-reduce(", ReduceOpName(op), ", ", DataTypeName(type),
                                        ", ", count, " elements)");
  MIMO_RETURN_IF_ERROR(CheckUsable(name));
  absl::Status args = CheckDataType(type);
  if (args.ok()) args = CheckReduceOp(op);
  if (args.ok()) args = CheckBuffer(data, count, "data");
  MIMO_RETURN_IF_ERROR(ArgumentError(name, args));
  if (count == 0) return absl::OkStatus();
  return Run(name, [&](ncclComm_t comm, cudaStream_t stream) {
    MIMO_NCCL_RETURN_IF_ERROR(
        comm, ncclAllReduce(data, data, count, NcclType(type), NcclOp(op), comm, stream));
    return absl::OkStatus();
  });
}

absl::Status NcclCommunicator::ReduceScatter(const void* input, void* output, size_t count,
                                             DataType type, ReduceOp op) {
  const std::string name = absl::StrCat("reduce-scatter(", ReduceOpName(op), ", ",
                                        DataTypeName(type), ", ", count, " elements)");
  MIMO_RETURN_IF_ERROR(CheckUsable(name));
  absl::Status args = CheckDataType(type);
  if (args.ok()) args = CheckReduceOp(op);
  if (args.ok()) args = CheckBuffer(input, count, "input");
  if (args.ok()) args = CheckBuffer(output, count, "output");
  MIMO_RETURN_IF_ERROR(ArgumentError(name, args));
  if (count == 0) return absl::OkStatus();
  return Run(name, [&](ncclComm_t comm, cudaStream_t stream) {
    MIMO_NCCL_RETURN_IF_ERROR(
        comm, ncclReduceScatter(input, output, count, NcclType(type), NcclOp(op), comm, stream));
    return absl::OkStatus();
  });
}

absl::Status NcclCommunicator::AllGather(const void* input, void* output, size_t count,
                                         DataType type) {
  const std::string name =
      absl::StrCat("all-gather(", DataTypeName(type), ", ", count, " elements)");
  MIMO_RETURN_IF_ERROR(CheckUsable(name));
  absl::Status args = CheckDataType(type);
  if (args.ok()) args = CheckBuffer(input, count, "input");
  if (args.ok()) args = CheckBuffer(output, count, "output");
  MIMO_RETURN_IF_ERROR(ArgumentError(name, args));
  if (count == 0) return absl::OkStatus();
  return Run(name, [&](ncclComm_t comm, cudaStream_t stream) {
    MIMO_NCCL_RETURN_IF_ERROR(comm,
                              ncclAllGather(input, output, count, NcclType(type), comm, stream));
    return absl::OkStatus();
  });
}

absl::Status NcclCommunicator::AllToAll(const void* input, absl::Span<const size_t> send_counts,
                                        void* output, absl::Span<const size_t> recv_counts,
                                        DataType type) {
  const std::string name = absl::StrCat("all-to-all(", DataTypeName(type), ")");
  MIMO_RETURN_IF_ERROR(CheckUsable(name));
  size_t send_total = 0, recv_total = 0;
  absl::Status args = CheckDataType(type);
  if (args.ok()) {
    args = CheckAllToAll(input, send_counts, output, recv_counts, size_, &send_total, &recv_total);
  }
  if (args.ok() && send_counts[rank_] != recv_counts[rank_]) {
    args = absl::InvalidArgumentError(absl::StrCat(
        "sends ", send_counts[rank_], " elements to itself but receives ", recv_counts[rank_]));
  }
  MIMO_RETURN_IF_ERROR(ArgumentError(name, args));
  if (send_total == 0 && recv_total == 0) {
    // NCCL send/recv pairs only with peers that have data for this member; nothing to wait for.
    return absl::OkStatus();
  }
  return Run(name, [&](ncclComm_t comm, cudaStream_t stream) {
    // One group of sends and receives, so NCCL runs them together without ordering deadlocks.
    MIMO_NCCL_RETURN_IF_ERROR(comm, ncclGroupStart());
    absl::Status status;
    size_t send_offset = 0, recv_offset = 0;
    for (int peer = 0; peer < size_ && status.ok(); ++peer) {
      if (send_counts[peer] > 0) {
        status = NcclStatus(ncclSend(At(input, send_offset, type), send_counts[peer],
                                     NcclType(type), peer, comm, stream),
                            comm, "ncclSend(input + offset, count, type, peer, comm, stream)",
                            __FILE__, __LINE__);
      }
      if (status.ok() && recv_counts[peer] > 0) {
        status = NcclStatus(ncclRecv(const_cast<char*>(At(output, recv_offset, type)),
                                     recv_counts[peer], NcclType(type), peer, comm, stream),
                            comm, "ncclRecv(output + offset, count, type, peer, comm, stream)",
                            __FILE__, __LINE__);
      }
      send_offset += send_counts[peer];
      recv_offset += recv_counts[peer];
    }
    // The group must be closed even after a failure inside it.
    const absl::Status end = NcclStatus(ncclGroupEnd(), comm, "ncclGroupEnd()", __FILE__, __LINE__);
    return status.ok() ? end : status;
  });
}

absl::Status NcclCommunicator::Broadcast(void* data, size_t count, DataType type, int root) {
  const std::string name =
      absl::StrCat("broadcast(", DataTypeName(type), ", ", count, " elements, root ", root, ")");
  MIMO_RETURN_IF_ERROR(CheckUsable(name));
  absl::Status args = CheckDataType(type);
  if (args.ok()) args = CheckRoot(root, size_);
  if (args.ok()) args = CheckBuffer(data, count, "data");
  MIMO_RETURN_IF_ERROR(ArgumentError(name, args));
  if (count == 0) return absl::OkStatus();
  return Run(name, [&](ncclComm_t comm, cudaStream_t stream) {
    MIMO_NCCL_RETURN_IF_ERROR(comm,
                              ncclBroadcast(data, data, count, NcclType(type), root, comm, stream));
    return absl::OkStatus();
  });
}

absl::Status NcclCommunicator::Send(const void* data, size_t count, DataType type, int peer) {
  const std::string name =
      absl::StrCat("send(", DataTypeName(type), ", ", count, " elements, to member ", peer, ")");
  MIMO_RETURN_IF_ERROR(CheckUsable(name));
  absl::Status args = CheckDataType(type);
  if (args.ok()) args = CheckPeer(peer, rank_, size_);
  if (args.ok()) args = CheckBuffer(data, count, "data");
  MIMO_RETURN_IF_ERROR(ArgumentError(name, args));
  if (count == 0) return absl::OkStatus();
  return Run(name, [&](ncclComm_t comm, cudaStream_t stream) {
    MIMO_NCCL_RETURN_IF_ERROR(comm, ncclSend(data, count, NcclType(type), peer, comm, stream));
    return absl::OkStatus();
  });
}

absl::Status NcclCommunicator::Recv(void* data, size_t count, DataType type, int peer) {
  const std::string name =
      absl::StrCat("recv(", DataTypeName(type), ", ", count, " elements, from member ", peer, ")");
  MIMO_RETURN_IF_ERROR(CheckUsable(name));
  absl::Status args = CheckDataType(type);
  if (args.ok()) args = CheckPeer(peer, rank_, size_);
  if (args.ok()) args = CheckBuffer(data, count, "data");
  MIMO_RETURN_IF_ERROR(ArgumentError(name, args));
  if (count == 0) return absl::OkStatus();
  return Run(name, [&](ncclComm_t comm, cudaStream_t stream) {
    MIMO_NCCL_RETURN_IF_ERROR(comm, ncclRecv(data, count, NcclType(type), peer, comm, stream));
    return absl::OkStatus();
  });
}

absl::Status NcclCommunicator::Barrier() {
  MIMO_RETURN_IF_ERROR(CheckUsable("barrier"));
  return Run("barrier", [&](ncclComm_t comm, cudaStream_t stream) {
    MIMO_NCCL_RETURN_IF_ERROR(
        comm, ncclAllReduce(scratch_, scratch_, 1, ncclInt32, ncclSum, comm, stream));
    return absl::OkStatus();
  });
}

}  // namespace mimo::comm
