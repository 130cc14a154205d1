// Aborting a connected Gloo context from any thread, which the Gloo release we build on lacks.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/synchronization/mutex.h"
#include "gloo/transport/unbound_buffer.h"

namespace gloo {
class Context;
}  // namespace gloo

namespace mimo::comm {

// Shuts down the sending side (shutdown(2), SHUT_WR) of the TCP socket of every pair of `context`
// that is still open. Each peer's I/O thread then reads end-of-file and fails its pair through
// Gloo's ordinary error path, closing its end, and so in turn does this side's: every operation
// waiting on the pair wakes with an IoException ("Connection closed by peer") and later
// operations throw. Thread-safe; never throws; returns the number of sockets shut down (none where
// FindGlooPairSockets cannot find them: it reads /proc, and Gloo's TCP transport is Linux only).
//
// Why sockets: Gloo 0.5 (2022) fails a pair only from inside (the protected
// Pair::signalExceptionExternal, which it calls on a timeout), and Pair::close() closes the socket
// without waking anyone. The sockets are found exactly, by FindGlooPairSockets (never by local
// address alone, which another pair's socket of this process can share: shutting that one down
// broke a healthy connection and left this one open).
//
// Not enough alone: when a pair fails, Pair::signalException wakes only the operations still
// waiting for their peer's notification and the *bound* buffers among the queued writes: the
// unbound buffer of a send that Gloo had queued (its socket full, or the write refused with EPIPE
// or ECONNRESET), or of a receive whose data was partly read, waits out the timeout. Every call
// therefore also runs on AbortableBuffers, which Abort wakes directly, and which GlooPairWatcher
// tells of every pair that fails.
int ShutDownGlooSockets(gloo::Context& context);

// The unbound buffers of the calls in flight on one communicator, made abortable. Wrap() returns a
// buffer that forwards everything to the one it wraps; once AbortAll() has been called (before
// or after the wrap), its waits, sends and receives throw StatusException(Cancelled) at once,
// including a wait already blocked in Gloo. Must outlive the buffers it wrapped. Thread-safe.
//
// Each buffer also records the peers it has sent to or received from. Once the pairs of all of them
// have failed (PeerClosed), no completion can come to it any more: a wait on it then takes a
// completion that came before, else throws StatusException(Unavailable) at once instead of waiting
// out the timeout. A buffer with a peer still connected waits on: a peer may close its connection
// once it has finished the call (and so is done with this buffer) while this member still waits
// for another. Giving up that way times the wrapped buffer out after 1 ms, which in Gloo fails
// every pair of its context: fine for a communicator, whose failed call closes every connection
// anyway (see GlooCommunicator::Break), not for a caller that would go on using the context.
class AbortableBuffers {
 public:
  // `timeout` bounds a wait that names none (Gloo's kUnsetTimeout): the context's timeout, which
  // the wrapped buffers would use. A wait woken early and waiting again waits only what is left of
  // its timeout.
  explicit AbortableBuffers(std::chrono::milliseconds timeout);
  AbortableBuffers(const AbortableBuffers&) = delete;
  AbortableBuffers& operator=(const AbortableBuffers&) = delete;

  std::unique_ptr<gloo::transport::UnboundBuffer> Wrap(
      std::unique_ptr<gloo::transport::UnboundBuffer> inner);

  // Wakes every wait on a live wrapped buffer and fails later use of any; `reason` becomes the
  // Cancelled message. Idempotent (the first reason stays); never blocks on the network.
  void AbortAll(const std::string& reason);

  // Whether a wait on a wrapped buffer blocks now (for GlooPairWatcher's `busy`). Thread-safe.
  bool Waiting() const { return waiting_.load() > 0; }

  // Has `hook` called (from the waiting thread, which it must not block) as a wait is about to
  // block: GlooPairWatcher::Hurry, so that the watcher checks often while waits block. Set before
  // the first wait.
  void SetOnWait(std::function<void()> hook) { on_wait_ = std::move(hook); }

  // Records that the pair with group rank `peer` has failed (Gloo closed its socket), and wakes the
  // waits of the buffers that had `peer` among their peers and whose peers have now all failed.
  // Never blocks on the network.
  void PeerClosed(int peer);

 private:
  class Buffer;

  void Add(Buffer* buffer);
  void Remove(Buffer* buffer);
  // When `peers` is not empty and all of their pairs have failed, why a wait can get nothing more;
  // else empty.
  std::string ClosedReason(const absl::flat_hash_set<int>& peers) ABSL_LOCKS_EXCLUDED(mu_);
  std::string ClosedReasonLocked(const absl::flat_hash_set<int>& peers)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::chrono::milliseconds timeout_;
  std::function<void()> on_wait_;
  std::atomic<int> waiting_{0};
  absl::Mutex mu_;
  bool aborted_ ABSL_GUARDED_BY(mu_) = false;
  std::string reason_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<Buffer*> live_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<int> closed_peers_ ABSL_GUARDED_BY(mu_);
};

}  // namespace mimo::comm
