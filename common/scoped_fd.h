// ScopedFd: a file descriptor closed when it goes.
#pragma once

#include <unistd.h>

namespace mimo {

class ScopedFd {
 public:
  explicit ScopedFd(int fd) : fd_(fd) {}  // fd < 0: nothing to close.
  ScopedFd(const ScopedFd&) = delete;
  ScopedFd& operator=(const ScopedFd&) = delete;
  ~ScopedFd() {
    if (fd_ >= 0) close(fd_);
  }
  int get() const { return fd_; }

 private:
  const int fd_;
};

}  // namespace mimo
