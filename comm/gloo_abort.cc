// Aborting a connected Gloo context from any thread, by shutting down its pairs' sockets.
#include "comm/gloo_abort.h"

#include <dirent.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <cstdlib>
#include <cstring>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "comm/gloo_error.h"
#include "gloo/context.h"
#include "gloo/transport/pair.h"
#include "gloo/transport/tcp/address.h"

namespace mimo::comm {
namespace {

struct OpenSocket {
  int fd;
  sockaddr_storage local;
};

// Connected TCP sockets of this process with their local addresses.
std::vector<OpenSocket> ConnectedSockets() {
  std::vector<OpenSocket> sockets;
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return sockets;
  while (const dirent* entry = readdir(dir)) {
    char* end = nullptr;
    const long fd = std::strtol(entry->d_name, &end, 10);
    if (end == entry->d_name || *end != '\0' || fd == dirfd(dir)) continue;
    struct stat st;
    if (fstat(static_cast<int>(fd), &st) != 0 || !S_ISSOCK(st.st_mode)) continue;
    OpenSocket socket{.fd = static_cast<int>(fd)};
    socklen_t length = sizeof(socket.local);
    if (getsockname(socket.fd, reinterpret_cast<sockaddr*>(&socket.local), &length) != 0) {
      continue;
    }
    // Listening sockets have no peer; they are never a pair's connection.
    sockaddr_storage peer;
    length = sizeof(peer);
    if (getpeername(socket.fd, reinterpret_cast<sockaddr*>(&peer), &length) != 0) continue;
    sockets.push_back(socket);
  }
  closedir(dir);
  return sockets;
}

bool SameAddress(const sockaddr_storage& a, const sockaddr_storage& b) {
  if (a.ss_family != b.ss_family) return false;
  if (a.ss_family == AF_INET) {
    const auto& x = reinterpret_cast<const sockaddr_in&>(a);
    const auto& y = reinterpret_cast<const sockaddr_in&>(b);
    return x.sin_port == y.sin_port && x.sin_addr.s_addr == y.sin_addr.s_addr;
  }
  if (a.ss_family == AF_INET6) {
    const auto& x = reinterpret_cast<const sockaddr_in6&>(a);
    const auto& y = reinterpret_cast<const sockaddr_in6&>(b);
    return x.sin6_port == y.sin6_port &&
           std::memcmp(&x.sin6_addr, &y.sin6_addr, sizeof(x.sin6_addr)) == 0;
  }
  return false;
}

}  // namespace

int ShutDownGlooSockets(gloo::Context& context) {
  int shut_down = 0;
  try {
    const std::vector<OpenSocket> sockets = ConnectedSockets();
    for (int peer = 0; peer < context.size; ++peer) {
      if (peer == context.rank) continue;
      std::unique_ptr<gloo::transport::Pair>& pair = context.getPair(peer);
      if (pair == nullptr) continue;
      const auto* address = dynamic_cast<const gloo::transport::tcp::Address*>(&pair->address());
      if (address == nullptr) continue;
      for (const OpenSocket& socket : sockets) {
        // A failed pair has closed its socket; its number may since name another, unrelated one,
        // but then that one's local address differs (each pair has its own port).
        if (SameAddress(socket.local, address->getSockaddr())) {
          if (shutdown(socket.fd, SHUT_WR) == 0) ++shut_down;
          break;
        }
      }
    }
  } catch (...) {
    // getPair throws when the context was never connected: nothing to shut down.
  }
  return shut_down;
}

// Forwards to the wrapped buffer; throws once aborted. Gloo's algorithms ignore what waitSend and
// waitRecv return, so an abort must throw rather than return false.
class AbortableBuffers::Buffer : public gloo::transport::UnboundBuffer {
 public:
  Buffer(AbortableBuffers& owner, std::unique_ptr<gloo::transport::UnboundBuffer> inner)
      : UnboundBuffer(inner->ptr, inner->size), owner_(owner), inner_(std::move(inner)) {
    owner_.Add(this);
  }
  ~Buffer() override { owner_.Remove(this); }

  bool waitRecv(int* rank, std::chrono::milliseconds timeout) override {
    ThrowIfAborted();
    const bool received = inner_->waitRecv(rank, timeout);
    // Woken by Abort (false), or done while it came: either way the call is over.
    ThrowIfAborted();
    return received;
  }
  bool waitSend(int* rank, std::chrono::milliseconds timeout) override {
    ThrowIfAborted();
    const bool sent = inner_->waitSend(rank, timeout);
    ThrowIfAborted();
    return sent;
  }
  void abortWaitRecv() override { inner_->abortWaitRecv(); }
  void abortWaitSend() override { inner_->abortWaitSend(); }
  void send(int dst_rank, uint64_t slot, size_t offset, size_t nbytes) override {
    ThrowIfAborted();
    inner_->send(dst_rank, slot, offset, nbytes);
  }
  void recv(int src_rank, uint64_t slot, size_t offset, size_t nbytes) override {
    ThrowIfAborted();
    inner_->recv(src_rank, slot, offset, nbytes);
  }
  void recv(std::vector<int> src_ranks, uint64_t slot, size_t offset, size_t nbytes) override {
    ThrowIfAborted();
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
    inner_->abortWaitSend();
    inner_->abortWaitRecv();
  }

 private:
  void ThrowIfAborted() {
    if (!aborted_.load()) return;
    absl::MutexLock lock(&mu_);
    throw StatusException(absl::CancelledError(reason_));
  }

  AbortableBuffers& owner_;
  const std::unique_ptr<gloo::transport::UnboundBuffer> inner_;
  std::atomic<bool> aborted_{false};
  absl::Mutex mu_;
  std::string reason_ ABSL_GUARDED_BY(mu_);
};

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

}  // namespace mimo::comm
