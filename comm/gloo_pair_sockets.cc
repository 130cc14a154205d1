// Finding the sockets of a Gloo context's pairs through its device's epoll registrations.
#include "comm/gloo_pair_sockets.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <system_error>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gloo/context.h"
#include "gloo/transport/pair.h"
#include "gloo/transport/tcp/loop.h"

namespace mimo::comm {
namespace {

// Reads a whole (small) file; empty when it cannot be read.
std::string ReadSmallFile(const std::string& path) {
  std::string contents;
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return contents;
  char chunk[4096];
  for (;;) {
    const ssize_t n = read(fd, chunk, sizeof(chunk));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    contents.append(chunk, static_cast<size_t>(n));
  }
  close(fd);
  return contents;
}

struct EpollTarget {
  int fd;
  ino_t inode;
};

// Every registration of every epoll descriptor of this process, by its event data. The kernel
// writes one line per registration in the epoll descriptor's fdinfo:
//   tfd: <fd> events: <hex> data: <hex> pos:<n> ino:<hex inode> sdev:<hex>
absl::flat_hash_map<uint64_t, EpollTarget> EpollRegistrations() {
  absl::flat_hash_map<uint64_t, EpollTarget> registrations;
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return registrations;
  while (const dirent* entry = readdir(dir)) {
    char* end = nullptr;
    const long fd = std::strtol(entry->d_name, &end, 10);
    if (end == entry->d_name || *end != '\0' || fd == dirfd(dir)) continue;
    char target[64];
    const std::string link = absl::StrCat("/proc/self/fd/", fd);
    const ssize_t length = readlink(link.c_str(), target, sizeof(target) - 1);
    if (length <= 0) continue;
    target[length] = '\0';
    if (std::strcmp(target, "anon_inode:[eventpoll]") != 0) continue;
    const std::string info = ReadSmallFile(absl::StrCat("/proc/self/fdinfo/", fd));
    for (absl::string_view line : absl::StrSplit(info, '\n')) {
      if (!absl::StartsWith(line, "tfd:")) continue;
      const std::string text(line);
      int target_fd = -1;
      unsigned events = 0;
      unsigned long long data = 0;
      long long pos = 0;
      unsigned long inode = 0;
      if (std::sscanf(text.c_str(), "tfd: %d events: %x data: %llx pos:%lld ino:%lx", &target_fd,
                      &events, &data, &pos, &inode) == 5) {
        registrations[data] = EpollTarget{.fd = target_fd, .inode = static_cast<ino_t>(inode)};
      }
    }
  }
  closedir(dir);
  return registrations;
}

bool IsSocketWithInode(int fd, ino_t inode) {
  struct stat st;
  return fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode) && st.st_ino == inode;
}

}  // namespace

std::vector<GlooPairSocket> FindGlooPairSockets(gloo::Context& context) {
  std::vector<GlooPairSocket> sockets;
  try {
    // Gloo's event loop gets the pair as a Handler (a second base of transport::tcp::Pair).
    absl::flat_hash_map<uint64_t, int> peers_by_handler;
    for (int peer = 0; peer < context.size; ++peer) {
      if (peer == context.rank) continue;
      std::unique_ptr<gloo::transport::Pair>& pair = context.getPair(peer);
      auto* handler = dynamic_cast<gloo::transport::tcp::Handler*>(pair.get());
      if (handler == nullptr) continue;
      peers_by_handler[reinterpret_cast<uintptr_t>(handler)] = peer;
    }
    if (peers_by_handler.empty()) return sockets;
    for (const auto& [data, target] : EpollRegistrations()) {
      auto it = peers_by_handler.find(data);
      if (it == peers_by_handler.end()) continue;
      // Checked in case the pair closed the descriptor since the kernel listed it.
      if (!IsSocketWithInode(target.fd, target.inode)) continue;
      sockets.push_back(GlooPairSocket{.peer = it->second, .fd = target.fd, .inode = target.inode});
    }
  } catch (...) {
    // getPair throws when the context was never connected: it has no sockets.
  }
  std::sort(sockets.begin(), sockets.end(),
            [](const GlooPairSocket& a, const GlooPairSocket& b) { return a.peer < b.peer; });
  return sockets;
}

bool IsSameSocket(const GlooPairSocket& socket) {
  return IsSocketWithInode(socket.fd, socket.inode);
}

absl::StatusOr<std::unique_ptr<GlooPairWatcher>> GlooPairWatcher::Start(
    gloo::Context& context, std::function<void(int peer)> on_closed) {
  const int stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (stop_fd < 0) {
    return absl::ResourceExhaustedError(
        absl::StrCat("watching the Gloo connections: eventfd: ", std::strerror(errno)));
  }
  std::unique_ptr<GlooPairWatcher> watcher(
      new GlooPairWatcher(FindGlooPairSockets(context), stop_fd, std::move(on_closed)));
  try {
    watcher->thread_ = std::thread([w = watcher.get()] { w->Run(); });
  } catch (const std::system_error& e) {
    return absl::ResourceExhaustedError(
        absl::StrCat("watching the Gloo connections: starting a thread: ", e.what()));
  }
  return watcher;
}

GlooPairWatcher::GlooPairWatcher(std::vector<GlooPairSocket> sockets, int stop_fd,
                                 std::function<void(int peer)> on_closed)
    : sockets_(std::move(sockets)), stop_fd_(stop_fd), on_closed_(std::move(on_closed)) {}

GlooPairWatcher::~GlooPairWatcher() {
  if (thread_.joinable()) {
    const uint64_t one = 1;
    while (write(stop_fd_, &one, sizeof(one)) < 0 && errno == EINTR) {
    }
    thread_.join();
  }
  close(stop_fd_);
}

void GlooPairWatcher::Run() {
  // Every open socket is polled for the peer's end of file (POLLRDHUP) and for errors and hang-ups
  // (always reported). After an event, the pair's socket is only checked (not polled, as the event
  // stays), more and more rarely, until Gloo has read to the end and closed it: until then a
  // completion may still come. Idle, every socket is checked once a second, for closes that no
  // event announced, or that poll missed as the descriptor went.
  constexpr int kIdleCheckMs = 1000;
  constexpr int kLongestPendingCheckMs = 64;
  struct Watched {
    GlooPairSocket socket;
    bool pending = false;
  };
  std::vector<Watched> watched;
  for (const GlooPairSocket& socket : sockets_) watched.push_back(Watched{.socket = socket});
  int pending_check_ms = 1;
  for (;;) {
    std::vector<pollfd> fds = {pollfd{.fd = stop_fd_, .events = POLLIN, .revents = 0}};
    std::vector<size_t> polled;
    bool any_pending = false;
    for (size_t i = 0; i < watched.size(); ++i) {
      if (watched[i].pending) {
        any_pending = true;
        continue;
      }
      fds.push_back(pollfd{.fd = watched[i].socket.fd, .events = POLLRDHUP, .revents = 0});
      polled.push_back(i);
    }
    const int timeout_ms = any_pending ? pending_check_ms : (watched.empty() ? -1 : kIdleCheckMs);
    const int ready = poll(fds.data(), fds.size(), timeout_ms);
    if (ready < 0 && errno != EINTR) return;
    if (ready > 0 && fds[0].revents != 0) return;
    for (size_t k = 0; k < polled.size(); ++k) {
      if (fds[k + 1].revents != 0) watched[polled[k]].pending = true;
    }
    for (auto it = watched.begin(); it != watched.end();) {
      if (IsSameSocket(it->socket)) {
        ++it;
        continue;
      }
      on_closed_(it->socket.peer);
      it = watched.erase(it);
    }
    const bool still_pending =
        std::any_of(watched.begin(), watched.end(), [](const Watched& w) { return w.pending; });
    pending_check_ms = still_pending ? std::min(2 * pending_check_ms, kLongestPendingCheckMs) : 1;
  }
}

}  // namespace mimo::comm
