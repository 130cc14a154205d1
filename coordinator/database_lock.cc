// DatabaseLock: flock(2) on <database>.lock, the holder's pid and host written into it.
#include "coordinator/database_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace mimo::coordinator {
namespace {

std::string ErrnoText(int error) { return std::strerror(error); }

// What the holder wrote ("pid 123 on host-a"), or "" when unreadable or empty.
std::string ReadHolder(int fd) {
  char buffer[256];
  const ssize_t n = pread(fd, buffer, sizeof(buffer) - 1, 0);
  if (n <= 0) return "";
  return std::string(absl::StripAsciiWhitespace(absl::string_view(buffer, n)));
}

}  // namespace

absl::StatusOr<std::unique_ptr<DatabaseLock>> DatabaseLock::Acquire(
    const std::string& database_path) {
  if (database_path == ":memory:") {
    return std::unique_ptr<DatabaseLock>(new DatabaseLock("", -1));
  }
  std::string path = absl::StrCat(database_path, ".lock");
  const int fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot open the database's lock file ", path, ": ", ErrnoText(errno)));
  }
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int error = errno;
    const std::string holder = ReadHolder(fd);
    close(fd);
    if (error == EWOULDBLOCK) {
      return absl::FailedPreconditionError(
          absl::StrCat("the database ", database_path, " is in use by another mimo-coordinator",
                       holder.empty() ? "" : absl::StrCat(" (", holder, ")"), ", which holds ",
                       path, "; one coordinator serves a database: stop that one first"));
    }
    return absl::FailedPreconditionError(
        absl::StrCat("cannot lock ", path, ": ", ErrnoText(error)));
  }
  char host[256] = {};
  if (gethostname(host, sizeof(host) - 1) != 0) host[0] = '\0';
  const std::string holder = absl::StrCat("pid ", getpid(), host[0] ? " on " : "", host, "\n");
  // Best effort: the lock, not the text, keeps the second coordinator out.
  if (ftruncate(fd, 0) == 0) {
    [[maybe_unused]] const ssize_t written = pwrite(fd, holder.data(), holder.size(), 0);
  }
  return std::unique_ptr<DatabaseLock>(new DatabaseLock(std::move(path), fd));
}

DatabaseLock::~DatabaseLock() {
  if (fd_ >= 0) close(fd_);  // Closing the last descriptor releases the flock.
}

}  // namespace mimo::coordinator
