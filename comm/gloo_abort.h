// Aborting a connected Gloo context from any thread, which the Gloo release we build on lacks.
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/synchronization/mutex.h"
#include "gloo/transport/unbound_buffer.h"

namespace gloo {
class Context;
}  // namespace gloo

namespace mimo::comm {

// Shuts down (shutdown(2), both directions) the TCP socket of every pair of `context`. Gloo's I/O
// thread then reads end-of-file on each and fails the pair through its ordinary error path: every
// operation waiting on it wakes with an IoException ("Connection closed by peer"), later
// operations throw, and the peers see their connections close. Thread-safe; never throws; returns
// the number of sockets shut down.
//
// Why sockets: Gloo 0.5 (2022) fails a pair only from inside (the protected
// Pair::signalExceptionExternal, which it calls on a timeout), and Pair::close() closes the socket
// without waking anyone. Gloo's public API does give each pair's local address, which for a
// connected pair is its socket's, so the socket is found among this process's open descriptors by
// that address.
//
// Not enough alone: when a write fails on a broken connection (EPIPE, ECONNRESET), Gloo queues the
// send to retry it, and when the pair then fails, Pair::signalException wakes only the *bound*
// buffers among the queued writes, so the unbound buffer of that send waits out the timeout. Every
// call therefore also runs on AbortableBuffers, which Abort wakes directly.
int ShutDownGlooSockets(gloo::Context& context);

// The unbound buffers of the calls in flight on one communicator, made abortable. Wrap() returns a
// buffer that forwards everything to the one it wraps; once AbortAll() has been called (before
// or after the wrap), its waits, sends and receives throw StatusException(Cancelled) at once,
// including a wait already blocked in Gloo. Must outlive the buffers it wrapped. Thread-safe.
class AbortableBuffers {
 public:
  AbortableBuffers() = default;
  AbortableBuffers(const AbortableBuffers&) = delete;
  AbortableBuffers& operator=(const AbortableBuffers&) = delete;

  std::unique_ptr<gloo::transport::UnboundBuffer> Wrap(
      std::unique_ptr<gloo::transport::UnboundBuffer> inner);

  // Wakes every wait on a live wrapped buffer and fails later use of any; `reason` becomes the
  // Cancelled message. Idempotent (the first reason stays); never blocks on the network.
  void AbortAll(const std::string& reason);

 private:
  class Buffer;

  void Add(Buffer* buffer);
  void Remove(Buffer* buffer);

  absl::Mutex mu_;
  bool aborted_ ABSL_GUARDED_BY(mu_) = false;
  std::string reason_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<Buffer*> live_ ABSL_GUARDED_BY(mu_);
};

}  // namespace mimo::comm
