// DatabaseLock: a second holder of one database is refused, naming the first; the lock goes with
// its holder, also when the holder is killed; in-memory databases need none.
#include "coordinator/database_lock.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <string>

#include "absl/strings/str_cat.h"
#include "tests/coordinator/test_server.h"

namespace mimo::coordinator {
namespace {

using ::testing::HasSubstr;

class DatabaseLockTest : public ::testing::Test {
 protected:
  void TearDown() override { testing::RemoveDb(db_); }
  std::string db_ =
      testing::TempDbPath(::testing::UnitTest::GetInstance()->current_test_info()->name());
};

TEST_F(DatabaseLockTest, ASecondHolderIsRefusedUntilTheFirstLetsGo) {
  absl::StatusOr<std::unique_ptr<DatabaseLock>> first = DatabaseLock::Acquire(db_);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ((*first)->path(), db_ + ".lock");
  const absl::StatusOr<std::unique_ptr<DatabaseLock>> second = DatabaseLock::Acquire(db_);
  ASSERT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition) << second.status();
  EXPECT_THAT(second.status().message(), HasSubstr("in use by another mimo-coordinator"));
  EXPECT_THAT(second.status().message(), HasSubstr(absl::StrCat("pid ", getpid())));
  first->reset();
  EXPECT_TRUE(DatabaseLock::Acquire(db_).ok());
}

TEST_F(DatabaseLockTest, AKilledHoldersLockIsFreeAtOnce) {
  int ready[2];
  ASSERT_EQ(pipe(ready), 0);
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    close(ready[0]);
    absl::StatusOr<std::unique_ptr<DatabaseLock>> lock = DatabaseLock::Acquire(db_);
    const char ok = lock.ok() ? '1' : '0';
    if (write(ready[1], &ok, 1) != 1) _exit(2);
    pause();  // Holds the lock until killed.
    _exit(0);
  }
  close(ready[1]);
  char ok = 0;
  ASSERT_EQ(read(ready[0], &ok, 1), 1);
  close(ready[0]);
  ASSERT_EQ(ok, '1');
  const absl::StatusOr<std::unique_ptr<DatabaseLock>> held = DatabaseLock::Acquire(db_);
  EXPECT_THAT(held.status().message(), HasSubstr(absl::StrCat("pid ", child)));
  kill(child, SIGKILL);
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  EXPECT_TRUE(DatabaseLock::Acquire(db_).ok());
}

TEST_F(DatabaseLockTest, InMemoryDatabasesNeedNoLock) {
  absl::StatusOr<std::unique_ptr<DatabaseLock>> a = DatabaseLock::Acquire(":memory:");
  absl::StatusOr<std::unique_ptr<DatabaseLock>> b = DatabaseLock::Acquire(":memory:");
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ((*a)->path(), "");
}

TEST_F(DatabaseLockTest, AnUnwritableFolderIsNamed) {
  const absl::StatusOr<std::unique_ptr<DatabaseLock>> lock =
      DatabaseLock::Acquire("/nonexistent-mimo-dir/jobs.db");
  EXPECT_EQ(lock.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(lock.status().message(), HasSubstr("/nonexistent-mimo-dir/jobs.db.lock"));
}

// The coordinator takes it: a second server on one database does not start.
TEST_F(DatabaseLockTest, ASecondCoordinatorOnOneDatabaseDoesNotStart) {
  absl::StatusOr<std::unique_ptr<CoordinatorServer>> first =
      CoordinatorServer::Start(testing::FastOptions(db_));
  ASSERT_TRUE(first.ok()) << first.status();
  const absl::StatusOr<std::unique_ptr<CoordinatorServer>> second =
      CoordinatorServer::Start(testing::FastOptions(db_));
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition) << second.status();
  first->reset();
  EXPECT_TRUE(CoordinatorServer::Start(testing::FastOptions(db_)).ok());
}

}  // namespace
}  // namespace mimo::coordinator
