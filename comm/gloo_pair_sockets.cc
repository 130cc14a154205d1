// Finding the sockets of a Gloo context's pairs through its device's epoll registrations.
#include "comm/gloo_pair_sockets.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/scoped_fd.h"
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
  dev_t dev;
  ino_t inode;
};

// The registrations an epoll descriptor's fdinfo lists, by their event data. The kernel writes one
// line per registration:
//   tfd: <fd> events: <hex> data: <hex>  pos:<n> ino:<hex inode> sdev:<hex device>
// The device in the kernel's own encoding (major << 20 | minor), not the C library's.
void ParseEpollFdinfo(const std::string& info,
                      absl::flat_hash_map<uint64_t, EpollTarget>& registrations) {
  for (absl::string_view line : absl::StrSplit(info, '\n')) {
    if (!absl::StartsWith(line, "tfd:")) continue;
    const std::string text(line);
    int target_fd = -1;
    unsigned events = 0;
    unsigned long long data = 0;
    long long pos = 0;
    unsigned long inode = 0;
    unsigned kernel_dev = 0;
    if (std::sscanf(text.c_str(), "tfd: %d events: %x data: %llx pos:%lld ino:%lx sdev:%x",
                    &target_fd, &events, &data, &pos, &inode, &kernel_dev) == 6) {
      registrations[data] = EpollTarget{.fd = target_fd,
                                        .dev = makedev(kernel_dev >> 20, kernel_dev & 0xfffff),
                                        .inode = static_cast<ino_t>(inode)};
    }
  }
}

// Every registration of every epoll descriptor of this process, by its event data.
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
    ParseEpollFdinfo(ReadSmallFile(absl::StrCat("/proc/self/fdinfo/", fd)), registrations);
  }
  closedir(dir);
  return registrations;
}

}  // namespace

bool IsSocketWithInode(int fd, dev_t dev, ino_t inode) {
  struct stat st;
  return fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode) && st.st_dev == dev && st.st_ino == inode;
}

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
      if (!IsSocketWithInode(target.fd, target.dev, target.inode)) continue;
      sockets.push_back(GlooPairSocket{
          .peer = it->second, .fd = target.fd, .dev = target.dev, .inode = target.inode});
    }
  } catch (...) {
    // getPair throws when the context was never connected: it has no sockets.
  }
  std::sort(sockets.begin(), sockets.end(),
            [](const GlooPairSocket& a, const GlooPairSocket& b) { return a.peer < b.peer; });
  return sockets;
}

absl::Status CheckGlooPairSocketsFindable() {
  const auto failed = [](absl::string_view what) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot find the sockets of Gloo's connections: ", what));
  };
  const ScopedFd epoll(epoll_create1(EPOLL_CLOEXEC));
  if (epoll.get() < 0) return failed(absl::StrCat("epoll_create1: ", std::strerror(errno)));
  // A socket, like a pair's (its device is the socket file system's).
  const ScopedFd target(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (target.get() < 0) return failed(absl::StrCat("socket: ", std::strerror(errno)));
  constexpr uint64_t kData = 0x6d696d6f;  // Any value: the check looks for it.
  epoll_event event{.events = EPOLLIN, .data = {.u64 = kData}};
  if (epoll_ctl(epoll.get(), EPOLL_CTL_ADD, target.get(), &event) != 0) {
    return failed(absl::StrCat("epoll_ctl: ", std::strerror(errno)));
  }
  const std::string path = absl::StrCat("/proc/self/fdinfo/", epoll.get());
  const std::string info = ReadSmallFile(path);
  if (info.empty()) return failed(absl::StrCat(path, " cannot be read (is /proc mounted?)"));
  absl::flat_hash_map<uint64_t, EpollTarget> registrations;
  ParseEpollFdinfo(info, registrations);
  auto it = registrations.find(kData);
  if (it == registrations.end()) {
    return failed(absl::StrCat(path, " lists no registration as 'tfd: ... ino: ... sdev: ...' ",
                               "(a kernel older than this code expects?)"));
  }
  if (it->second.fd != target.get() ||
      !IsSocketWithInode(target.get(), it->second.dev, it->second.inode)) {
    return failed(absl::StrCat(path, " lists a registration whose descriptor, device or inode is ",
                               "not the registered socket's"));
  }
  return absl::OkStatus();
}

}  // namespace mimo::comm
