// A Communicator over NCCL on one CUDA device.
#include "comm/nccl_communicator.h"

#include <cstring>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "comm/nccl_status.h"
#include "kernels/cuda_device_guard.h"
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
  const std::string group = GroupName(kind, members);
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
      new NcclCommunicator(kind, members, group_rank, cuda_device, timeout));
  if (absl::Status status = comm->Init(id); !status.ok()) return failed(status);
  return comm;
}

NcclCommunicator::NcclCommunicator(absl::string_view kind, const std::vector<int>& members,
                                   int rank, int device, absl::Duration timeout)
    : CheckedCommunicator(
          absl::StrCat(MemberDescription(kind, members, rank), " on CUDA device ", device)),
      rank_(rank),
      size_(static_cast<int>(members.size())),
      device_(device),
      timeout_(timeout) {}

absl::Status NcclCommunicator::Init(const ncclUniqueId& id) {
  kernels::CudaDeviceGuard guard(device_);
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
  kernels::CudaDeviceGuard guard(device_);
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
  kernels::CudaDeviceGuard guard(device_);
  ncclCommAbort(comm_);
  comm_ = nullptr;
}

void NcclCommunicator::Abort() {
  abort_requested_.store(true);
  std::lock_guard<std::mutex> lock(mu_);
  AbortLocked();
}

absl::Status NcclCommunicator::CheckUsable(absl::string_view name) {
  if (abort_requested_.load()) return AbortedError(name);
  std::lock_guard<std::mutex> lock(mu_);
  return BrokenError(name, broken_);
}

template <typename Enqueue>
absl::Status NcclCommunicator::Run(absl::string_view name, Enqueue&& enqueue) {
  const absl::Time deadline = absl::Now() + timeout_;
  kernels::CudaDeviceGuard guard(device_);
  std::unique_lock<std::mutex> lock(mu_);
  // A failure breaks the communicator for good: NCCL says nothing can be assumed about enqueued
  // work after an error, so the only way out is ncclCommAbort.
  auto fail = [&](const absl::Status& status) {
    const absl::Status annotated =
        abort_requested_.load() ? CallError(absl::StatusCode::kCancelled, name, " was aborted")
                                : FailedError(name, status);
    if (broken_.ok()) broken_ = annotated;
    AbortLocked();
    return annotated;
  };
  if (comm_ == nullptr) {
    return abort_requested_.load()
               ? AbortedError(name)
               : CallError(absl::StatusCode::kFailedPrecondition, name, ": not connected");
  }
  if (absl::Status status = enqueue(comm_, stream_); !status.ok()) return fail(status);
  // Wait until NCCL has posted everything (a nonblocking communicator may still be enqueuing),
  // then until the stream has run it, watching for asynchronous errors and the deadline.
  bool recorded = false;
  for (int poll = 0;; ++poll) {
    if (comm_ == nullptr) {
      return CallError(absl::StatusCode::kCancelled, name, " was aborted");
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

absl::Status NcclCommunicator::DoAllReduce(absl::string_view name, void* data, size_t count,
                                           DataType type, ReduceOp op) {
  return Run(name, [&](ncclComm_t comm, cudaStream_t stream) {
    MIMO_NCCL_RETURN_IF_ERROR(
        comm, ncclAllReduce(data, data, count, NcclType(type), NcclOp(op), comm, stream));
    return absl::OkStatus();
  });
}

absl::Status NcclCommunicator::DoReduceScatter(absl::string_view name, const void* input,
                                               void* output, size_t count, DataType type,
                                               ReduceOp op) {
  return Run(name, [&](ncclComm_t comm, cudaStream_t stream) {
    MIMO_NCCL_RETURN_IF_ERROR(
        comm, ncclReduceScatter(input, output, count, NcclType(type), NcclOp(op), comm, stream));
    return absl::OkStatus();
  });
}

absl::Status NcclCommunicator::DoAllGather(absl::string_view name, const void* input, void* output,
                                           size_t count, DataType type) {
  return Run(name, [&](ncclComm_t comm, cudaStream_t stream) {
    MIMO_NCCL_RETURN_IF_ERROR(comm,
                              ncclAllGather(input, output, count, NcclType(type), comm, stream));
    return absl::OkStatus();
  });
}

absl::Status NcclCommunicator::DoAllToAll(absl::string_view name, const void* input,
                                          absl::Span<const size_t> send_counts, size_t send_total,
                                          void* output, absl::Span<const size_t> recv_counts,
                                          size_t recv_total, DataType type) {
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

absl::Status NcclCommunicator::DoBroadcast(absl::string_view name, void* data, size_t count,
                                           DataType type, int root) {
  return Run(name, [&](ncclComm_t comm, cudaStream_t stream) {
    MIMO_NCCL_RETURN_IF_ERROR(comm,
                              ncclBroadcast(data, data, count, NcclType(type), root, comm, stream));
    return absl::OkStatus();
  });
}

absl::Status NcclCommunicator::DoSend(absl::string_view name, const void* data, size_t count,
                                      DataType type, int peer) {
  return Run(name, [&](ncclComm_t comm, cudaStream_t stream) {
    MIMO_NCCL_RETURN_IF_ERROR(comm, ncclSend(data, count, NcclType(type), peer, comm, stream));
    return absl::OkStatus();
  });
}

absl::Status NcclCommunicator::DoRecv(absl::string_view name, void* data, size_t count,
                                      DataType type, int peer) {
  return Run(name, [&](ncclComm_t comm, cudaStream_t stream) {
    MIMO_NCCL_RETURN_IF_ERROR(comm, ncclRecv(data, count, NcclType(type), peer, comm, stream));
    return absl::OkStatus();
  });
}

absl::Status NcclCommunicator::DoBarrier(absl::string_view name) {
  return Run(name, [&](ncclComm_t comm, cudaStream_t stream) {
    MIMO_NCCL_RETURN_IF_ERROR(
        comm, ncclAllReduce(scratch_, scratch_, 1, ncclInt32, ncclSum, comm, stream));
    return absl::OkStatus();
  });
}

}  // namespace mimo::comm
