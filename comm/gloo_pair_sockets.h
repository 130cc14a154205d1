// Finding the TCP socket of each pair of a Gloo context, and watching those sockets for closing.
#pragma once

#include <sys/types.h>

#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"

namespace gloo {
class Context;
}  // namespace gloo

namespace mimo::comm {

// The connected socket of the pair with group rank `peer`: its descriptor, and its inode, which
// tells whether the descriptor still names that socket (Gloo closes it when the pair fails, and the
// number may then be reused).
struct GlooPairSocket {
  int peer = -1;
  int fd = -1;
  ino_t inode = 0;
};

// The sockets of `context`'s pairs that Gloo still has open; none for a pair that has failed or
// closed, or when the context was never connected. Thread-safe; never throws.
//
// Why this way: Gloo's public API gives a pair only its local address, and that does not identify
// its socket: Linux gives outgoing connections to different destinations the same ephemeral port,
// so two pairs of one process (of one context or of two) can have one local address. Gloo does
// register every connected pair's socket with its device's epoll instance, with the pair (its
// transport::tcp::Handler) as the event's data, and the kernel lists each registration, target
// descriptor and inode included, in /proc/self/fdinfo of the epoll descriptor.
std::vector<GlooPairSocket> FindGlooPairSockets(gloo::Context& context);

// True while `socket.fd` still names the socket it named when found.
bool IsSameSocket(const GlooPairSocket& socket);

// Watches the sockets of a context's pairs from a thread of its own and calls `on_closed(peer)`
// (once per pair, from that thread) after Gloo has closed the pair's socket, which it does only
// when the pair fails: from then on no operation with that peer can complete. Sees a peer's end of
// the connection close (end of file or reset) through poll(2), then waits for Gloo to read up to
// it and close its own; sees a close without such an event (a timeout) within a second. Pairs
// already closed when it starts are not watched: Gloo refuses new operations with them. Stopping
// (the destructor) waits for a call of on_closed in progress.
class GlooPairWatcher {
 public:
  // Watches the pairs FindGlooPairSockets finds. Fails only when the thread or its wake-up
  // descriptor cannot be made.
  static absl::StatusOr<std::unique_ptr<GlooPairWatcher>> Start(
      gloo::Context& context, std::function<void(int peer)> on_closed);

  GlooPairWatcher(const GlooPairWatcher&) = delete;
  GlooPairWatcher& operator=(const GlooPairWatcher&) = delete;
  ~GlooPairWatcher();

 private:
  GlooPairWatcher(std::vector<GlooPairSocket> sockets, int stop_fd,
                  std::function<void(int peer)> on_closed);

  void Run();

  const std::vector<GlooPairSocket> sockets_;
  // An eventfd, readable once the destructor asks the thread to end.
  const int stop_fd_;
  const std::function<void(int peer)> on_closed_;
  std::thread thread_;
};

}  // namespace mimo::comm
