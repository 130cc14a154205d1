// Finding the TCP socket of each pair of a Gloo context, through /proc (Linux only).
#pragma once

#include <sys/types.h>

#include <vector>

#include "absl/status/status.h"

namespace gloo {
class Context;
}  // namespace gloo

namespace mimo::comm {

// The connected socket of the pair with group rank `peer`: its descriptor, and the device and inode
// of the socket, which tell whether the descriptor still names it (Gloo closes it when the pair
// fails, and the number may then be reused).
struct GlooPairSocket {
  int peer = -1;
  int fd = -1;
  dev_t dev = 0;
  ino_t inode = 0;
};

// The sockets of `context`'s pairs that Gloo still has open, by peer; none for a pair that has
// failed or closed, or when the context was never connected. Thread-safe; never throws.
//
// Linux only, like Gloo's TCP transport itself (it runs on epoll): the sockets are found through
// /proc. Finds nothing when /proc is missing or restricted, when the kernel's epoll fdinfo lacks
// the fields read here (older kernels list tfd:, events: and data: without ino: and sdev:), or
// when the process has no descriptor left to read it with; CheckGlooPairSocketsFindable tells.
//
// Why this way: Gloo's public API gives a pair only its local address, and that does not identify
// its socket: Linux gives outgoing connections to different destinations the same ephemeral port,
// so two pairs of one process (of one context or of two) can have one local address. Gloo does
// register every connected pair's socket with its device's epoll instance, with the pair (its
// transport::tcp::Handler) as the event's data, and the kernel lists each registration, target
// descriptor, inode and device included, in /proc/self/fdinfo of the epoll descriptor.
std::vector<GlooPairSocket> FindGlooPairSockets(gloo::Context& context);

// True while `fd` names a socket with device `dev` and inode `inode`: the socket it named when it
// was found, not another file that got the number after a close.
bool IsSocketWithInode(int fd, dev_t dev, ino_t inode);

// True while `socket.fd` still names the socket it named when found.
inline bool IsSameSocket(const GlooPairSocket& socket) {
  return IsSocketWithInode(socket.fd, socket.dev, socket.inode);
}

// OK when this process can find pair sockets the way FindGlooPairSockets does, checked on an epoll
// instance of its own (a registration made for the check must be listed with its descriptor,
// device and inode); else FailedPrecondition saying what is missing.
absl::Status CheckGlooPairSocketsFindable();

}  // namespace mimo::comm
