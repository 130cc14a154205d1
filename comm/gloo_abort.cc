// Aborting a connected Gloo context from any thread, by shutting down its pairs' sockets, and
// waking the waits of its calls.
#include "comm/gloo_abort.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <exception>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "comm/gloo_error.h"
#include "comm/gloo_pair_sockets.h"
#include "gloo/context.h"

namespace mimo::comm {

int ShutDownGlooSockets(gloo::Context& context) {
  int shut_down = 0;
  for (const GlooPairSocket& socket : FindGlooPairSockets(context)) {
    // On a duplicate, checked to be the pair's socket still: the pair may have closed its
    // descriptor since it was found, and the number may now name another file. With no descriptor
    // to spare, on the number itself, checked just before: it would take the pair closing it and
    // another file getting the number between the two calls to shut the wrong socket down.
    const int duplicate = fcntl(socket.fd, F_DUPFD_CLOEXEC, 0);
    const int fd = duplicate >= 0 ? duplicate : socket.fd;
    if (IsSocketWithInode(fd, socket.dev, socket.inode) && shutdown(fd, SHUT_WR) == 0) {
      ++shut_down;
    }
    if (duplicate >= 0) close(duplicate);
  }
  return shut_down;
}

// Forwards to the wrapped buffer; throws once aborted, or once a wait can get nothing more. Gloo's
// algorithms ignore what waitSend and waitRecv return, so neither may return false for that.
class AbortableBuffers::Buffer : public gloo::transport::UnboundBuffer {
 public:
  Buffer(AbortableBuffers& owner, std::unique_ptr<gloo::transport::UnboundBuffer> inner)
      : UnboundBuffer(inner->ptr, inner->size), owner_(owner), inner_(std::move(inner)) {
    owner_.Add(this);
  }
  ~Buffer() override { owner_.Remove(this); }

  bool waitRecv(int* rank, std::chrono::milliseconds timeout) override {
    return Wait(Direction::kRecv, rank, timeout);
  }
  bool waitSend(int* rank, std::chrono::milliseconds timeout) override {
    return Wait(Direction::kSend, rank, timeout);
  }
  void abortWaitRecv() override {
    caller_aborts_recv_.store(true);
    inner_->abortWaitRecv();
  }
  void abortWaitSend() override {
    caller_aborts_send_.store(true);
    inner_->abortWaitSend();
  }
  void send(int dst_rank, uint64_t slot, size_t offset, size_t nbytes) override {
    ThrowIfAborted();
    AddPeer(dst_rank);
    inner_->send(dst_rank, slot, offset, nbytes);
  }
  void recv(int src_rank, uint64_t slot, size_t offset, size_t nbytes) override {
    ThrowIfAborted();
    AddPeer(src_rank);
    inner_->recv(src_rank, slot, offset, nbytes);
  }
  void recv(std::vector<int> src_ranks, uint64_t slot, size_t offset, size_t nbytes) override {
    ThrowIfAborted();
    for (int rank : src_ranks) AddPeer(rank);
    inner_->recv(std::move(src_ranks), slot, offset, nbytes);
  }

  // Called by the owner, under its lock (so the buffer is alive): marks the buffer aborted, then
  // wakes a wait blocked on it. A wait that starts later sees the mark, or (if it checked just
  // before) consumes the one-shot wake-up that abortWait* leaves behind.
  void Abort(const std::string& reason) {
    {
      absl::MutexLock lock(&mu_);
      reason_ = reason;
    }
    aborted_.store(true);
    Wake();
  }

  // The peers this buffer has had operations with so far.
  absl::flat_hash_set<int> Peers() {
    absl::MutexLock lock(&mu_);
    return peers_;
  }

  // Wakes a wait blocked on the buffer (or the next one), which then looks at why (see Wait).
  void Wake() {
    inner_->abortWaitSend();
    inner_->abortWaitRecv();
  }

 private:
  enum class Direction { kSend, kRecv };

  bool InnerWait(Direction direction, int* rank, std::chrono::milliseconds timeout) {
    return direction == Direction::kSend ? inner_->waitSend(rank, timeout)
                                         : inner_->waitRecv(rank, timeout);
  }

  // InnerWait, counted in owner_.waiting_ while it blocks.
  bool BlockingWait(Direction direction, int* rank, std::chrono::milliseconds timeout) {
    owner_.waiting_.fetch_add(1);
    if (owner_.on_wait_ != nullptr) owner_.on_wait_();
    struct Done {
      std::atomic<int>& waiting;
      ~Done() { waiting.fetch_sub(1); }
    } done{owner_.waiting_};
    return InnerWait(direction, rank, timeout);
  }

  bool Wait(Direction direction, int* rank, std::chrono::milliseconds timeout) {
    std::atomic<bool>& caller_aborts =
        direction == Direction::kSend ? caller_aborts_send_ : caller_aborts_recv_;
    if (timeout == gloo::transport::kUnsetTimeout) timeout = owner_.timeout_;
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      ThrowIfAborted();
      // Looked at before every blocking wait, not only once woken: PeerClosed wakes a buffer once,
      // and an earlier wait on it may have used that wake-up (to take a completion that had come),
      // leaving nothing to end this one.
      const std::string closed = owner_.ClosedReason(Peers());
      if (!closed.empty()) return TakeArrived(direction, rank, caller_aborts, closed);
      const bool done = BlockingWait(direction, rank, timeout);
      // Woken by Abort (false), or done while it came: either way the call is over.
      ThrowIfAborted();
      if (done) return true;
      // False only after abortWait*: by our caller (who gets the false it asked for), or by Wake
      // after a peer's pair failed. The wake-up may be left over from an earlier wait, or this
      // buffer may since have begun operations with a peer still connected: then look again, and
      // wait on for what is left of the time (never negative: Gloo reads -1 ms as its default).
      if (caller_aborts.exchange(false)) return false;
      timeout = std::max(
          std::chrono::ceil<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()),
          std::chrono::milliseconds(0));
    }
  }

  // Every peer of the buffer has failed (`closed` says so): completions can no longer come, but
  // one may have come before. A wait with a short timeout takes it.
  //
  // Two attempts: the first may end at once, on a wake-up left over from PeerClosed (abortWait*
  // leaves one behind for the next wait when no wait is blocked). There is at most one of those:
  // Gloo's flag holds one, and PeerClosed wakes a buffer only as the last of its peers closes, at
  // most once per peer, so that none comes once all have closed (Abort throws instead). The second
  // then takes a completion, or times out.
  //
  // Timing out is how Gloo's waits give up, and its way is heavy: it fails every pair of the
  // context, not only this buffer's ("Application timeout caused pair closure"). That costs
  // nothing here: the call fails (Unavailable) anyway, and a failed call breaks its communicator,
  // which shuts every connection of the group down (GlooCommunicator::Break) so that the other
  // members stop waiting on this one.
  bool TakeArrived(Direction direction, int* rank, std::atomic<bool>& caller_aborts,
                   const std::string& closed) {
    constexpr auto kTakeArrived = std::chrono::milliseconds(1);
    constexpr int kAttempts = 2;
    for (int attempt = 0; attempt < kAttempts; ++attempt) {
      try {
        if (InnerWait(direction, rank, kTakeArrived)) return true;
      } catch (const std::exception&) {
        break;
      }
      ThrowIfAborted();
      if (caller_aborts.exchange(false)) return false;
    }
    ThrowIfAborted();
    throw StatusException(absl::UnavailableError(closed));
  }

  void AddPeer(int rank) {
    absl::MutexLock lock(&mu_);
    peers_.insert(rank);
  }

  void ThrowIfAborted() {
    if (!aborted_.load()) return;
    absl::MutexLock lock(&mu_);
    throw StatusException(absl::CancelledError(reason_));
  }

  AbortableBuffers& owner_;
  const std::unique_ptr<gloo::transport::UnboundBuffer> inner_;
  std::atomic<bool> aborted_{false};
  std::atomic<bool> caller_aborts_send_{false};
  std::atomic<bool> caller_aborts_recv_{false};
  absl::Mutex mu_;
  std::string reason_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<int> peers_ ABSL_GUARDED_BY(mu_);
};

AbortableBuffers::AbortableBuffers(std::chrono::milliseconds timeout) : timeout_(timeout) {}

std::unique_ptr<gloo::transport::UnboundBuffer> AbortableBuffers::Wrap(
    std::unique_ptr<gloo::transport::UnboundBuffer> inner) {
  return std::make_unique<Buffer>(*this, std::move(inner));
}

void AbortableBuffers::Add(Buffer* buffer) {
  absl::MutexLock lock(&mu_);
  live_.insert(buffer);
  if (aborted_) buffer->Abort(reason_);
}

void AbortableBuffers::Remove(Buffer* buffer) {
  absl::MutexLock lock(&mu_);
  live_.erase(buffer);
}

void AbortableBuffers::AbortAll(const std::string& reason) {
  absl::MutexLock lock(&mu_);
  if (aborted_) return;
  aborted_ = true;
  reason_ = reason;
  for (Buffer* buffer : live_) buffer->Abort(reason_);
}

void AbortableBuffers::PeerClosed(int peer) {
  absl::MutexLock lock(&mu_);
  if (!closed_peers_.insert(peer).second) return;
  for (Buffer* buffer : live_) {
    // Only the buffers whose last connected peer this was: a buffer whose peers had all closed
    // before was woken then (see Buffer::TakeArrived).
    const absl::flat_hash_set<int> peers = buffer->Peers();
    if (peers.contains(peer) && !ClosedReasonLocked(peers).empty()) buffer->Wake();
  }
}

std::string AbortableBuffers::ClosedReason(const absl::flat_hash_set<int>& peers) {
  absl::MutexLock lock(&mu_);
  return ClosedReasonLocked(peers);
}

std::string AbortableBuffers::ClosedReasonLocked(const absl::flat_hash_set<int>& peers) {
  if (peers.empty()) return "";
  std::vector<int> closed;
  for (int peer : peers) {
    if (!closed_peers_.contains(peer)) return "";
    closed.push_back(peer);
  }
  std::sort(closed.begin(), closed.end());
  return closed.size() == 1
             ? absl::StrCat("the connection with member ", closed[0],
                            " closed while the call waited on it")
             : absl::StrCat("the connections with members ", absl::StrJoin(closed, ", "),
                            " closed while the call waited on them");
}

}  // namespace mimo::comm
