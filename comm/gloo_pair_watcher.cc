// Watching the sockets of a Gloo context's pairs with an epoll instance, to learn when Gloo closes
// them.
#include "comm/gloo_pair_watcher.h"

#include <fcntl.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <exception>
#include <iostream>
#include <limits>
#include <string>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "gloo/context.h"

namespace mimo::comm {
namespace {

// The event data of the wake-up descriptor; a watched socket's is its index.
constexpr uint64_t kWakeData = std::numeric_limits<uint64_t>::max();
// How often the sockets are checked: when idle, while busy, and at most after an event.
constexpr int kIdleCheckMs = 1000;
constexpr int kBusyCheckMs = 50;
constexpr int kLongestPendingCheckMs = 64;

// Registers `socket` with `epoll_fd` for its peer's end of the connection (EPOLLRDHUP; errors and
// hang-ups always count), once: a registration that fired stays quiet, so that a socket whose end
// Gloo has not read yet does not wake the thread again and again. Through a duplicate checked to be
// the socket still (Gloo may have closed the number since it was found, and another file may have
// it now): a registration lasts until the socket's last descriptor closes, so closing the duplicate
// leaves it in place. With no descriptor to spare, through the number itself, checked just before.
// False when the socket has gone or cannot be registered.
bool Register(int epoll_fd, const GlooPairSocket& socket, uint64_t data) {
  epoll_event event{.events = EPOLLRDHUP | EPOLLONESHOT, .data = {.u64 = data}};
  const int fd = fcntl(socket.fd, F_DUPFD_CLOEXEC, 0);
  if (fd < 0) {
    return IsSameSocket(socket) && epoll_ctl(epoll_fd, EPOLL_CTL_ADD, socket.fd, &event) == 0;
  }
  const bool registered = IsSocketWithInode(fd, socket.dev, socket.inode) &&
                          epoll_ctl(epoll_fd, EPOLL_CTL_ADD, fd, &event) == 0;
  close(fd);
  return registered;
}

// Why not every pair of `context` is watched, given the sockets found; OK when all are.
absl::Status Coverage(const gloo::Context& context, size_t found) {
  const size_t pairs = static_cast<size_t>(context.size - 1);
  if (found >= pairs) return absl::OkStatus();
  const std::string watching =
      absl::StrCat("watching the Gloo connections: found the sockets of ", found, " of ", pairs);
  const absl::Status findable = CheckGlooPairSocketsFindable();
  if (!findable.ok()) {
    return absl::FailedPreconditionError(absl::StrCat(watching, ": ", findable.message()));
  }
  return absl::FailedPreconditionError(absl::StrCat(watching, " (the others had closed)"));
}

}  // namespace

absl::StatusOr<std::unique_ptr<GlooPairWatcher>> GlooPairWatcher::Start(
    gloo::Context& context, std::function<void(int peer)> on_closed, std::function<bool()> busy) {
  const int epoll_fd = epoll_create1(EPOLL_CLOEXEC);
  if (epoll_fd < 0) {
    return absl::ResourceExhaustedError(
        absl::StrCat("watching the Gloo connections: epoll_create1: ", std::strerror(errno)));
  }
  const int wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  epoll_event wake{.events = EPOLLIN, .data = {.u64 = kWakeData}};
  if (wake_fd < 0 || epoll_ctl(epoll_fd, EPOLL_CTL_ADD, wake_fd, &wake) != 0) {
    const absl::Status status = absl::ResourceExhaustedError(
        absl::StrCat("watching the Gloo connections: ", wake_fd < 0 ? "eventfd: " : "epoll_ctl: ",
                     std::strerror(errno)));
    if (wake_fd >= 0) close(wake_fd);
    close(epoll_fd);
    return status;
  }
  const std::vector<GlooPairSocket> sockets = FindGlooPairSockets(context);
  std::vector<Watched> watched;
  for (const GlooPairSocket& socket : sockets) {
    // One not registered (gone since it was found, or refused) is checked soon, then once a second.
    watched.push_back(
        Watched{.socket = socket, .pending = !Register(epoll_fd, socket, watched.size())});
  }
  std::unique_ptr<GlooPairWatcher> watcher(
      new GlooPairWatcher(std::move(watched), epoll_fd, wake_fd, Coverage(context, sockets.size()),
                          std::move(on_closed), std::move(busy)));
  try {
    watcher->thread_ = std::thread([w = watcher.get()] { w->Run(); });
  } catch (const std::system_error& e) {
    return absl::ResourceExhaustedError(
        absl::StrCat("watching the Gloo connections: starting a thread: ", e.what()));
  }
  return watcher;
}

GlooPairWatcher::GlooPairWatcher(std::vector<Watched> watched, int epoll_fd, int wake_fd,
                                 absl::Status coverage, std::function<void(int peer)> on_closed,
                                 std::function<bool()> busy)
    : watched_(std::move(watched)),
      epoll_fd_(epoll_fd),
      wake_fd_(wake_fd),
      coverage_(std::move(coverage)),
      on_closed_(std::move(on_closed)),
      busy_(std::move(busy)) {}

GlooPairWatcher::~GlooPairWatcher() {
  if (thread_.joinable()) {
    stopping_.Notify();
    Wake();
    thread_.join();
  }
  close(wake_fd_);
  close(epoll_fd_);
}

void GlooPairWatcher::Hurry() {
  if (!hurried_.exchange(true)) Wake();
}

void GlooPairWatcher::Wake() {
  const uint64_t one = 1;
  while (write(wake_fd_, &one, sizeof(one)) < 0 && errno == EINTR) {
  }
}

bool GlooPairWatcher::StillHurried() {
  if (!hurried_.load()) return false;
  // Cleared first: a Hurry() from here on wakes the thread again, and one before is seen in busy_.
  hurried_.store(false);
  if (busy_ == nullptr || !busy_()) return false;
  hurried_.store(true);
  return true;
}

void GlooPairWatcher::Run() {
  pthread_setname_np(pthread_self(), "gloo-pair-watch");
  constexpr int kMaxEvents = 16;
  const auto any_pending = [this] {
    return std::any_of(watched_.begin(), watched_.end(),
                       [](const Watched& w) { return w.pending; });
  };
  // 0 while no socket is pending (or its fast checks are over).
  int pending_check_ms = any_pending() ? 1 : 0;
  bool hurried = StillHurried();
  for (;;) {
    const bool all_closed =
        std::all_of(watched_.begin(), watched_.end(), [](const Watched& w) { return w.closed; });
    int timeout_ms = hurried ? kBusyCheckMs : kIdleCheckMs;
    if (pending_check_ms > 0) timeout_ms = std::min(timeout_ms, pending_check_ms);
    if (all_closed) timeout_ms = -1;
    epoll_event events[kMaxEvents];
    const int ready = epoll_wait(epoll_fd_, events, kMaxEvents, timeout_ms);
    if (ready < 0) {
      if (errno == EINTR) continue;
      std::cerr << "warning: watching the Gloo connections: epoll_wait: " << std::strerror(errno)
                << "; checking them every second (50 ms while busy) instead" << std::endl;
      CheckWithoutEpoll();
      return;
    }
    bool new_event = false;
    for (int i = 0; i < ready; ++i) {
      const uint64_t data = events[i].data.u64;
      if (data == kWakeData) {
        if (stopping_.HasBeenNotified()) return;
        uint64_t count;
        while (read(wake_fd_, &count, sizeof(count)) < 0 && errno == EINTR) {
        }
      } else if (data < watched_.size() && !watched_[data].closed) {
        watched_[data].pending = true;
        new_event = true;
      }
    }
    CheckSockets();
    hurried = StillHurried();
    if (!any_pending()) {
      pending_check_ms = 0;
    } else if (new_event) {
      pending_check_ms = 1;
    } else if (pending_check_ms > 0) {
      // Past the longest, back to the idle (or busy) checks: the socket may stay open for long.
      pending_check_ms = 2 * pending_check_ms > kLongestPendingCheckMs ? 0 : 2 * pending_check_ms;
    }
  }
}

void GlooPairWatcher::CheckWithoutEpoll() {
  for (;;) {
    const absl::Duration wait = absl::Milliseconds(StillHurried() ? kBusyCheckMs : kIdleCheckMs);
    if (stopping_.WaitForNotificationWithTimeout(wait)) return;
    CheckSockets();
  }
}

void GlooPairWatcher::CheckSockets() {
  for (Watched& w : watched_) {
    if (w.closed || IsSameSocket(w.socket)) continue;
    w.closed = true;
    w.pending = false;
    // Thrown out of the thread, it would end the process.
    try {
      on_closed_(w.socket.peer);
    } catch (const std::exception& e) {
      std::cerr << "warning: watching the Gloo connections: reporting that the connection with "
                << "member " << w.socket.peer << " closed threw: " << e.what() << std::endl;
    } catch (...) {
      std::cerr << "warning: watching the Gloo connections: reporting that the connection with "
                << "member " << w.socket.peer << " closed threw" << std::endl;
    }
  }
}

}  // namespace mimo::comm
