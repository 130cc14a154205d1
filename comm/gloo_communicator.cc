// A Communicator over Gloo's TCP transport, on host memory.
#include "comm/gloo_communicator.h"

#include <signal.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <iostream>
#include <mutex>
#include <utility>

#include "absl/strings/str_cat.h"
#include "comm/gloo_abort.h"
#include "comm/gloo_error.h"
#include "comm/gloo_pair_watcher.h"
#include "comm/gloo_store.h"
#include "common/bfloat16.h"
#include "common/status_macros.h"
#include "gloo/allgather.h"
#include "gloo/allreduce.h"
#include "gloo/alltoallv.h"
#include "gloo/barrier.h"
#include "gloo/broadcast.h"
#include "gloo/math.h"
#include "gloo/rendezvous/context.h"
#include "gloo/transport/tcp/device.h"
#include "gloo/transport/unbound_buffer.h"

namespace mimo::comm {
namespace {

// Gloo's collectives use slots whose top byte is 0x01..0x08; point-to-point messages get their
// own so they can never be matched with a collective's.
constexpr uint64_t kPointToPointSlot = uint64_t{0x40} << 56;

// Stands for a bfloat16 element in Gloo's templates, which only need its size.
struct BFloat16Element {
  uint16_t bits;
};
static_assert(sizeof(BFloat16Element) == 2);

// Calls fn(T*{}) with T the C++ element type of `type` (validated by the caller).
template <typename Fn>
void WithElementType(DataType type, Fn&& fn) {
  switch (type) {
    case DataType::kFloat32:
      return fn(static_cast<float*>(nullptr));
    case DataType::kBFloat16:
      return fn(static_cast<BFloat16Element*>(nullptr));
    case DataType::kInt32:
      return fn(static_cast<int32_t*>(nullptr));
    case DataType::kInt64:
      return fn(static_cast<int64_t*>(nullptr));
  }
}

// Gloo's element-wise reduction signature: c[i] = a[i] (op) b[i]; c may alias a or b.
using ReduceFn = void (*)(void*, const void*, const void*, size_t);

template <typename Combine>
void ReduceBFloat16(void* c, const void* a, const void* b, size_t n, Combine combine) {
  auto* out = static_cast<uint16_t*>(c);
  const auto* x = static_cast<const uint16_t*>(a);
  const auto* y = static_cast<const uint16_t*>(b);
  for (size_t i = 0; i < n; ++i) {
    out[i] = FloatToBFloat16(combine(BFloat16ToFloat(x[i]), BFloat16ToFloat(y[i])));
  }
}

void SumBFloat16(void* c, const void* a, const void* b, size_t n) {
  ReduceBFloat16(c, a, b, n, [](float x, float y) { return x + y; });
}
void MaxBFloat16(void* c, const void* a, const void* b, size_t n) {
  ReduceBFloat16(c, a, b, n, [](float x, float y) { return x < y ? y : x; });
}
void MinBFloat16(void* c, const void* a, const void* b, size_t n) {
  ReduceBFloat16(c, a, b, n, [](float x, float y) { return y < x ? y : x; });
}

template <typename T>
ReduceFn ReduceFunction(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return &gloo::sum<T>;
    case ReduceOp::kMax:
      return &gloo::max<T>;
    case ReduceOp::kMin:
      return &gloo::min<T>;
  }
  return nullptr;
}

template <>
ReduceFn ReduceFunction<BFloat16Element>(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return &SumBFloat16;
    case ReduceOp::kMax:
      return &MaxBFloat16;
    case ReduceOp::kMin:
      return &MinBFloat16;
  }
  return nullptr;
}

// Gloo reads from and writes to raw pointers even for empty buffers; give it a valid one.
void* NonNull(const void* data) {
  static char dummy;
  return data != nullptr ? const_cast<void*>(data) : &dummy;
}

// Gloo writes to its sockets with writev(2), which raises SIGPIPE when the peer has gone (died,
// or aborted its group), and the default action ends the process. Ignored, the write fails with
// EPIPE and Gloo reports an IoException instead. This is process-wide, as in Python, which Gloo
// is mostly used from and which ignores SIGPIPE at startup; a handler someone installed is kept.
void IgnoreSigpipe() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction current;
    if (sigaction(SIGPIPE, nullptr, &current) == 0 && current.sa_handler == SIG_DFL) {
      signal(SIGPIPE, SIG_IGN);
    }
  });
}

// BarrierOptions with its buffer (the only one Gloo's barrier uses) made abortable.
class AbortableBarrierOptions : public gloo::BarrierOptions {
 public:
  AbortableBarrierOptions(const std::shared_ptr<gloo::Context>& context, AbortableBuffers& buffers)
      : gloo::BarrierOptions(context) {
    buffer = buffers.Wrap(std::move(buffer));
  }
};

// Writes `message` to standard error as a warning, the first time only in this process.
void WarnOnce(const std::string& message) {
  static std::atomic<bool> warned{false};
  if (warned.exchange(true)) return;
  std::cerr << "warning: " << message << std::endl;
}

}  // namespace

absl::StatusOr<std::shared_ptr<gloo::transport::Device>> GlooCommunicator::CreateTcpDevice(
    const std::string& hostname) {
  IgnoreSigpipe();
  std::shared_ptr<gloo::transport::Device> device;
  const absl::Status status = CallGloo([&] {
    gloo::transport::tcp::attr attr;
    attr.hostname = hostname;
    device = gloo::transport::tcp::CreateDevice(attr);
  });
  if (!status.ok()) {
    return absl::Status(status.code(), absl::StrCat("creating the Gloo TCP device on '",
                                                    hostname.empty() ? "<host name>" : hostname,
                                                    "': ", status.message()));
  }
  return device;
}

absl::StatusOr<std::unique_ptr<GlooCommunicator>> GlooCommunicator::Connect(
    std::string kind, std::vector<int> members, int group_rank, KeyValueStore& store,
    std::shared_ptr<gloo::transport::Device> device, absl::Duration timeout) {
  const std::string group = GroupName(kind, members);
  const int size = static_cast<int>(members.size());
  if (size < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("group ", group, ": Gloo needs at least two members"));
  }
  if (group_rank < 0 || group_rank >= size) {
    return absl::InvalidArgumentError(
        absl::StrCat("group ", group, ": member index ", group_rank, " is out of range"));
  }
  if (device == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("group ", group, ": no Gloo device"));
  }
  // Gloo reads a zero timeout as "wait forever".
  if (timeout < absl::Milliseconds(1)) {
    return absl::InvalidArgumentError(absl::StrCat("group ", group, ": timeout ",
                                                   absl::FormatDuration(timeout), " is under 1ms"));
  }
  GlooStore gloo_store(store, GroupStorePrefix(kind, members), group, timeout);
  std::shared_ptr<gloo::rendezvous::Context> context;
  const absl::Status status = CallGloo([&] {
    context = std::make_shared<gloo::rendezvous::Context>(group_rank, size);
    // The pairs take their timeout from the context when they are created, and Gloo gives a pair
    // five times its timeout to connect: a peer that published its address and went away (a job
    // cancelled in its rendezvous) held this member for 5 x `timeout`. So the pairs are made with
    // a fifth of it, and the context gets the whole timeout after (the store's waits keep it
    // throughout). The pairs and Gloo's transport context keep the fifth: Gloo's sync mode, the
    // bound-buffer API and an unbound buffer's wait without a timeout of its own would get it,
    // and none is used here (the collectives pass the context's, AbortableBuffers its own).
    const int64_t ms = absl::ToInt64Milliseconds(timeout);
    context->setTimeout(std::chrono::milliseconds(std::max<int64_t>(1, ms / 5)));
    context->connectFullMesh(gloo_store, device);
    context->setTimeout(std::chrono::milliseconds(ms));
  });
  if (!status.ok()) {
    return absl::Status(status.code(), absl::StrCat("connecting group ", group, " as member ",
                                                    group_rank, ": ", status.message()));
  }
  // A member whose pairs are up may still be finishing its peers' handshakes: without a barrier a
  // member that returns and closes its end at once (an error in a later group, a short-lived
  // group) fails a peer's connect with "Connection closed by peer".
  std::unique_ptr<GlooCommunicator> comm(new GlooCommunicator(std::move(context), kind, members));
  AbortableBuffers* buffers = &comm->buffers_;
  absl::StatusOr<std::unique_ptr<GlooPairWatcher>> watcher = GlooPairWatcher::Start(
      *comm->context_, [buffers](int peer) { buffers->PeerClosed(peer); },
      [buffers] { return buffers->Waiting(); });
  if (!watcher.ok()) {
    return absl::Status(watcher.status().code(),
                        absl::StrCat("connecting group ", group, " as member ", group_rank, ": ",
                                     watcher.status().message()));
  }
  comm->watcher_ = *std::move(watcher);
  buffers->SetOnWait([watcher = comm->watcher_.get()] { watcher->Hurry(); });
  if (!comm->watcher_->coverage().ok()) {
    // Not fatal: the group works, but what needs the sockets does less.
    WarnOnce(absl::StrCat("group ", group, " member ", group_rank, ": ",
                          comm->watcher_->coverage().message(),
                          ": aborting the group or a failed call cannot close those connections, "
                          "so that their peers may wait out the timeout, and a call may wait it "
                          "out after its peers have gone"));
  }
  const absl::Status barrier = comm->Barrier();
  if (!barrier.ok()) {
    return absl::Status(barrier.code(), absl::StrCat("connecting group ", group, " as member ",
                                                     group_rank, ": ", barrier.message()));
  }
  return comm;
}

GlooCommunicator::GlooCommunicator(std::shared_ptr<gloo::Context> context, absl::string_view kind,
                                   const std::vector<int>& members)
    : CheckedCommunicator(MemberDescription(kind, members, context->rank)),
      context_(std::move(context)),
      rank_(context_->rank),
      size_(context_->size),
      buffers_(context_->getTimeout()) {}

GlooCommunicator::~GlooCommunicator() = default;

absl::Status GlooCommunicator::CheckUsable(absl::string_view name) {
  if (aborted_.load()) return AbortedError(name);
  absl::MutexLock lock(&mu_);
  return BrokenError(name, broken_);
}

template <typename Fn>
absl::Status GlooCommunicator::Run(absl::string_view name, Fn&& fn) {
  absl::Status status = CallGloo(std::forward<Fn>(fn));
  if (status.ok()) return status;
  status = aborted_.load() ? CallError(absl::StatusCode::kCancelled, name,
                                       absl::StrCat(" was aborted: ", status.message()))
                           : FailedError(name, status);
  Break(status);
  return status;
}

void GlooCommunicator::Break(const absl::Status& status) {
  {
    absl::MutexLock lock(&mu_);
    if (!broken_.ok()) return;
    broken_ = status;
  }
  // The other members may be blocked on their connections with this one (a member of three or
  // more waits on the others, not only on the one that failed): closing ours fails them at once,
  // instead of at their timeout.
  ShutDownGlooSockets(*context_);
}

void GlooCommunicator::AllReduceInPlace(void* data, size_t count, DataType type, ReduceOp op) {
  gloo::AllreduceOptions opts(context_);
  WithElementType(type, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    opts.template setOutput<T>(Buffer(data, count * sizeof(T)));
    opts.setReduceFunction(ReduceFunction<T>(op));
  });
  gloo::allreduce(opts);
}

absl::Status GlooCommunicator::DoAllReduce(absl::string_view name, void* data, size_t count,
                                           DataType type, ReduceOp op) {
  return Run(name, [&] { AllReduceInPlace(data, count, type, op); });
}

absl::Status GlooCommunicator::DoReduceScatter(absl::string_view name, const void* input,
                                               void* output, size_t count, DataType type,
                                               ReduceOp op) {
  const size_t block_bytes = count * DataTypeSize(type);
  return Run(name, [&] {
    // All-reduce a copy of the whole input, then keep this member's block.
    std::vector<char> all(static_cast<const char*>(input),
                          static_cast<const char*>(input) + block_bytes * size_);
    AllReduceInPlace(all.data(), count * size_, type, op);
    std::memcpy(output, all.data() + block_bytes * rank_, block_bytes);
  });
}

absl::Status GlooCommunicator::DoAllGather(absl::string_view name, const void* input, void* output,
                                           size_t count, DataType type) {
  return Run(name, [&] {
    gloo::AllgatherOptions opts(context_);
    WithElementType(type, [&](auto* tag) {
      using T = std::remove_pointer_t<decltype(tag)>;
      opts.template setInput<T>(Buffer(input, count * sizeof(T)));
      opts.template setOutput<T>(Buffer(output, count * size_ * sizeof(T)));
    });
    gloo::allgather(opts);
  });
}

absl::Status GlooCommunicator::DoAllToAll(absl::string_view name, const void* input,
                                          absl::Span<const size_t> send_counts, size_t send_total,
                                          void* output, absl::Span<const size_t> recv_counts,
                                          size_t recv_total, DataType type) {
  // Swap (what I send you, what I expect from you) with every peer before the data, so that both
  // ends of a mismatched pair of counts see it.
  std::vector<int64_t> mine(2 * size_), theirs(2 * size_);
  for (int p = 0; p < size_; ++p) {
    mine[2 * p] = static_cast<int64_t>(send_counts[p]);
    mine[2 * p + 1] = static_cast<int64_t>(recv_counts[p]);
  }
  MIMO_RETURN_IF_ERROR(Run(absl::StrCat(name, " count exchange"), [&] {
    gloo::AlltoallvOptions opts(context_);
    opts.setInput<int64_t>(Buffer(mine.data(), mine.size() * sizeof(int64_t)),
                           std::vector<int64_t>(size_, 2));
    opts.setOutput<int64_t>(Buffer(theirs.data(), theirs.size() * sizeof(int64_t)),
                            std::vector<int64_t>(size_, 2));
    gloo::alltoallv(opts);
  }));
  for (int p = 0; p < size_; ++p) {
    if (p == rank_) continue;
    if (theirs[2 * p] != mine[2 * p + 1] || theirs[2 * p + 1] != mine[2 * p]) {
      const absl::Status mismatch = CallError(
          absl::StatusCode::kInvalidArgument, name,
          absl::StrCat(": counts disagree with member ", p, ": it sends ", theirs[2 * p],
                       " elements here where ", mine[2 * p + 1], " are expected, and expects ",
                       theirs[2 * p + 1], " where ", mine[2 * p], " are sent"));
      // The members no longer agree on what comes next.
      Break(mismatch);
      return mismatch;
    }
  }

  std::vector<int64_t> sends(send_counts.begin(), send_counts.end());
  std::vector<int64_t> recvs(recv_counts.begin(), recv_counts.end());
  return Run(name, [&] {
    gloo::AlltoallvOptions opts(context_);
    WithElementType(type, [&](auto* tag) {
      using T = std::remove_pointer_t<decltype(tag)>;
      opts.template setInput<T>(Buffer(NonNull(input), send_total * sizeof(T)), std::move(sends));
      opts.template setOutput<T>(Buffer(NonNull(output), recv_total * sizeof(T)), std::move(recvs));
    });
    gloo::alltoallv(opts);
  });
}

absl::Status GlooCommunicator::DoBroadcast(absl::string_view name, void* data, size_t count,
                                           DataType type, int root) {
  return Run(name, [&] {
    gloo::BroadcastOptions opts(context_);
    WithElementType(type, [&](auto* tag) {
      using T = std::remove_pointer_t<decltype(tag)>;
      opts.template setOutput<T>(Buffer(data, count * sizeof(T)));
    });
    opts.setRoot(root);
    gloo::broadcast(opts);
  });
}

absl::Status GlooCommunicator::DoSend(absl::string_view name, const void* data, size_t count,
                                      DataType type, int peer) {
  return Run(name, [&] {
    auto buffer = Buffer(data, count * DataTypeSize(type));
    buffer->send(peer, kPointToPointSlot);
    // Waits up to the context's timeout; false only after abortWaitSend, which nothing calls.
    if (!buffer->waitSend()) throw gloo::IoException("send was interrupted");
  });
}

absl::Status GlooCommunicator::DoRecv(absl::string_view name, void* data, size_t count,
                                      DataType type, int peer) {
  return Run(name, [&] {
    auto buffer = Buffer(data, count * DataTypeSize(type));
    buffer->recv(peer, kPointToPointSlot);
    if (!buffer->waitRecv()) throw gloo::IoException("recv was interrupted");
  });
}

absl::Status GlooCommunicator::DoBarrier(absl::string_view name) {
  return Run(name, [&] {
    AbortableBarrierOptions opts(context_, buffers_);
    gloo::barrier(opts);
  });
}

std::unique_ptr<gloo::transport::UnboundBuffer> GlooCommunicator::Buffer(const void* data,
                                                                         size_t bytes) {
  return buffers_.Wrap(context_->createUnboundBuffer(const_cast<void*>(data), bytes));
}

void GlooCommunicator::Abort() {
  if (aborted_.exchange(true)) return;
  // First the calls in flight (their waits throw at once), then the connections (the peers see
  // them close, and waits on Gloo's internal buffers fail as the pairs do).
  buffers_.AbortAll(absl::StrCat(description(), ": the communicator was aborted"));
  ShutDownGlooSockets(*context_);
}

}  // namespace mimo::comm
