// Watching the sockets of a Gloo context's pairs, to learn when Gloo closes them (Linux only).
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "comm/gloo_pair_sockets.h"

namespace gloo {
class Context;
}  // namespace gloo

namespace mimo::comm {

// Watches the sockets of a context's pairs from a thread of its own and calls `on_closed(peer)`
// (once per pair, from that thread) after Gloo has closed the pair's socket, which it does only
// when the pair fails: from then on no operation with that peer can complete.
//
// The thread sleeps in an epoll instance of its own, which (unlike poll(2)) does not hold the
// sockets open: Gloo's close of a socket releases it at once, and the peer reads its end of file
// at once too. It wakes when a peer's end closes (end of file, reset or error), then checks the
// socket after 1, 2, 4, ... 64 ms for Gloo to have read up to that end and closed its own; past
// that (Gloo may never read to the end: data may wait for a receive not yet posted), and when
// idle, it checks every socket once a second, which also sees the closes no event announced (a
// timeout's).
//
// An event can be lost: when Gloo reads the peer's end and closes the socket before the thread has
// collected the event, the close takes the socket, and its pending event, out of the epoll set (a
// quarter to a half of the time in tests). So while `busy()` says that something waits on the
// pairs, the thread checks every socket every 50 ms instead of every second; Hurry() tells it that
// busy() may have turned true.
//
// Pairs already closed when it starts are not watched: Gloo refuses new operations with them.
// Stopping (the destructor) waits for a call of on_closed in progress. An exception from on_closed
// is reported (standard error) and the watching goes on.
//
// Linux only, like Gloo's TCP transport: the sockets are found through /proc (FindGlooPairSockets)
// and watched with epoll(7).
class GlooPairWatcher {
 public:
  // Watches the pairs FindGlooPairSockets finds. `busy` (none: never busy) is called from the
  // watcher's thread. Fails only when the thread or its epoll instance cannot be made; a pair whose
  // socket is not found is left unwatched (see coverage()).
  static absl::StatusOr<std::unique_ptr<GlooPairWatcher>> Start(
      gloo::Context& context, std::function<void(int peer)> on_closed,
      std::function<bool()> busy = nullptr);

  GlooPairWatcher(const GlooPairWatcher&) = delete;
  GlooPairWatcher& operator=(const GlooPairWatcher&) = delete;
  ~GlooPairWatcher();

  // OK when every pair of the context had its socket found and watched at the start; else
  // FailedPrecondition saying how many and why (the sockets cannot be found in this process, or
  // the others' pairs had already closed).
  const absl::Status& coverage() const { return coverage_; }

  // Says that busy() may have become true: the thread, if it sleeps for its idle second, wakes and
  // checks every 50 ms for as long as busy() holds. One atomic operation when it already does.
  // Thread-safe.
  void Hurry();

 private:
  struct Watched {
    GlooPairSocket socket;
    // An event came (its registration is one-shot): wait for Gloo to close the socket.
    bool pending = false;
    bool closed = false;
  };

  GlooPairWatcher(std::vector<Watched> watched, int epoll_fd, int wake_fd, absl::Status coverage,
                  std::function<void(int peer)> on_closed, std::function<bool()> busy);

  void Run();
  // Once epoll_wait fails: checks every socket once a second (every 50 ms while busy) until
  // stopped.
  void CheckWithoutEpoll();
  // Whether the next checks come every 50 ms, clearing hurried_ when busy() no longer holds.
  bool StillHurried();
  // Wakes the thread.
  void Wake();
  // Reports every watched socket Gloo has closed since.
  void CheckSockets();

  std::vector<Watched> watched_;
  // The thread's epoll instance: wake_fd_ and every watched socket.
  const int epoll_fd_;
  // An eventfd, made readable to wake the thread: to stop (stopping_) or to hurry (hurried_).
  const int wake_fd_;
  const absl::Status coverage_;
  const std::function<void(int peer)> on_closed_;
  const std::function<bool()> busy_;
  absl::Notification stopping_;
  // Set by Hurry (waking the thread if it was clear); cleared by the thread once busy_ says no.
  std::atomic<bool> hurried_{false};
  std::thread thread_;
};

}  // namespace mimo::comm
