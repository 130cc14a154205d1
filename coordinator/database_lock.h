// One coordinator per database: an exclusive lock on a file beside it, held while it runs.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace mimo::coordinator {

// An advisory flock(2) on `<database>.lock` that a coordinator holds for its life. Two
// coordinators on one database would each claim the other's running jobs as its own after a
// "restart" (JobManager::Recover) and fail them while their workers train on; the lock refuses the
// second one. The kernel drops the lock when its holder dies however it dies, so a coordinator
// killed with SIGKILL is restarted at once. The file keeps the holder's pid and host for the
// message the next one prints; it is never removed (removing it would let two processes hold
// locks on two different files of one name).
class DatabaseLock {
 public:
  // Takes the lock on `database_path`.lock without waiting: FailedPrecondition naming the holder
  // when another process holds it, an error naming the file when it cannot be created or locked.
  // ":memory:" databases are private to their process and need none (a lock that holds nothing).
  static absl::StatusOr<std::unique_ptr<DatabaseLock>> Acquire(const std::string& database_path);
  ~DatabaseLock();
  DatabaseLock(const DatabaseLock&) = delete;
  DatabaseLock& operator=(const DatabaseLock&) = delete;

  // The lock file ("" for an in-memory database).
  const std::string& path() const { return path_; }

 private:
  DatabaseLock(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  std::string path_;
  int fd_ = -1;
};

}  // namespace mimo::coordinator
