// GlooPairWatcher on bare Gloo contexts connected over loopback.
#include "comm/gloo_pair_watcher.h"

#include <dirent.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <functional>
#include <iterator>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "comm/gloo_error.h"
#include "comm/gloo_pair_sockets.h"
#include "comm/in_memory_store.h"
#include "tests/comm/gloo_contexts.h"

namespace mimo::comm {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr uint64_t kSlot = 21;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// True when this process has a watcher thread (named gloo-pair-watch) and every one is asleep.
bool WatcherThreadsSleep() {
  DIR* dir = opendir("/proc/self/task");
  if (dir == nullptr) return false;
  int found = 0;
  int asleep = 0;
  while (const dirent* entry = readdir(dir)) {
    const std::string task = absl::StrCat("/proc/self/task/", entry->d_name);
    if (ReadFile(task + "/comm") != "gloo-pair-watch\n") continue;
    ++found;
    // The state follows the name, which is in parentheses.
    const std::string stat = ReadFile(task + "/stat");
    const size_t name_end = stat.rfind(')');
    if (name_end != std::string::npos && stat.size() > name_end + 2 && stat[name_end + 2] == 'S') {
      ++asleep;
    }
  }
  closedir(dir);
  return found > 0 && asleep == found;
}

// Waits (checking every millisecond) until `condition` holds or 10 s have passed; returns it.
bool WaitUntil(const std::function<bool()>& condition) {
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (!condition()) {
    if (absl::Now() > deadline) return false;
    absl::SleepFor(absl::Milliseconds(1));
  }
  return true;
}

// Makes `context`'s Gloo close the sockets of all its pairs, as a call that times out does (a
// receive from `peer` waited on for 1 ms): no event comes on them first.
void TimeOutAReceive(gloo::Context& context, int peer) {
  char byte = 0;
  auto buffer = context.createUnboundBuffer(&byte, 1);
  buffer->recv(peer, kSlot);
  const absl::Status status =
      CallGloo([&] { buffer->waitRecv(nullptr, std::chrono::milliseconds(1)); });
  EXPECT_EQ(status.code(), absl::StatusCode::kDeadlineExceeded) << status;
}

// The peers a watcher reported, in order.
class Reported {
 public:
  void Add(int peer) {
    absl::MutexLock lock(&mu_);
    peers_.push_back(peer);
  }

  // Waits up to 10 s for `n` peers to have been reported; returns those reported by then.
  std::vector<int> WaitFor(size_t n) {
    absl::MutexLock lock(&mu_);
    wanted_ = n;
    mu_.AwaitWithTimeout(absl::Condition(this, &Reported::Enough), absl::Seconds(10));
    return peers_;
  }

 private:
  bool Enough() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return peers_.size() >= wanted_; }

  absl::Mutex mu_;
  std::vector<int> peers_ ABSL_GUARDED_BY(mu_);
  size_t wanted_ ABSL_GUARDED_BY(mu_) = 0;
};

TEST(GlooPairWatcherTest, ReportsEachPeerWhoseConnectionCloses) {
  constexpr int kSize = 3;
  InMemoryStore store;
  auto contexts = ConnectGlooContexts(kSize, store, absl::Seconds(20));
  for (const auto& context : contexts) ASSERT_NE(context, nullptr);
  Reported reported;
  // Busy: the sockets are also checked every 50 ms, which finds a close whose event was lost.
  absl::StatusOr<std::unique_ptr<GlooPairWatcher>> watcher = GlooPairWatcher::Start(
      *contexts[0], [&](int peer) { reported.Add(peer); }, [] { return true; });
  ASSERT_TRUE(watcher.ok()) << watcher.status();
  (*watcher)->Hurry();
  EXPECT_TRUE((*watcher)->coverage().ok()) << (*watcher)->coverage();
  // Rank 2 goes (its pairs close their sockets); rank 0's Gloo reads the end of file and fails its
  // pair. The connection with rank 1, still up, is checked along with it (before it: the sockets
  // go by peer) and not reported.
  contexts[2].reset();
  EXPECT_THAT(reported.WaitFor(1), ElementsAre(2));
  // Then rank 1 goes too.
  contexts[1].reset();
  EXPECT_THAT(reported.WaitFor(2), ElementsAre(2, 1));
}

// Gloo closes a watched socket while the watcher sleeps: the peer reads the end of the connection
// at once. A watcher asleep in poll(2) held the socket open until the poll returned (its 1 s idle
// timeout), so the peer learnt of the failure up to a second late.
TEST(GlooPairWatcherTest, ThePeerReadsTheEndAtOnceWhenGlooClosesAWatchedSocket) {
  InMemoryStore store;
  auto contexts = ConnectGlooContexts(2, store, absl::Seconds(5));
  ASSERT_NE(contexts[0], nullptr);
  ASSERT_NE(contexts[1], nullptr);
  absl::StatusOr<std::unique_ptr<GlooPairWatcher>> watcher =
      GlooPairWatcher::Start(*contexts[0], [](int) {});
  ASSERT_TRUE(watcher.ok()) << watcher.status();
  ASSERT_TRUE(WaitUntil(WatcherThreadsSleep));
  char byte = 0;
  auto buffer = contexts[1]->createUnboundBuffer(&byte, 1);
  buffer->recv(0, kSlot);
  TimeOutAReceive(*contexts[0], 1);
  const absl::Time closed = absl::Now();
  const absl::Status status = CallGloo([&] { buffer->waitRecv(); });
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  // Milliseconds, unless the machine is very busy; the watcher's sleep lasts a second.
  EXPECT_LT(absl::Now() - closed, absl::Milliseconds(500));
}

// A socket Gloo closes with no event on it first (a timeout's) is found by the check the watcher
// makes once a second.
TEST(GlooPairWatcherTest, ReportsACloseThatNoEventAnnounced) {
  InMemoryStore store;
  auto contexts = ConnectGlooContexts(2, store, absl::Seconds(5));
  ASSERT_NE(contexts[0], nullptr);
  ASSERT_NE(contexts[1], nullptr);
  Reported reported;
  absl::StatusOr<std::unique_ptr<GlooPairWatcher>> watcher =
      GlooPairWatcher::Start(*contexts[0], [&](int peer) { reported.Add(peer); });
  ASSERT_TRUE(watcher.ok()) << watcher.status();
  TimeOutAReceive(*contexts[0], 1);
  EXPECT_THAT(reported.WaitFor(1), ElementsAre(1));
}

// While busy() holds, the sockets are checked every 50 ms, not once a second (an event can be lost,
// and a wait may depend on the report): Hurry() wakes the thread from its idle sleep to do so.
TEST(GlooPairWatcherTest, ChecksOftenWhileBusy) {
  InMemoryStore store;
  auto contexts = ConnectGlooContexts(2, store, absl::Seconds(5));
  ASSERT_NE(contexts[0], nullptr);
  ASSERT_NE(contexts[1], nullptr);
  Reported reported;
  absl::StatusOr<std::unique_ptr<GlooPairWatcher>> watcher = GlooPairWatcher::Start(
      *contexts[0], [&](int peer) { reported.Add(peer); }, [] { return true; });
  ASSERT_TRUE(watcher.ok()) << watcher.status();
  // Into its idle sleep of a second, then hurried.
  ASSERT_TRUE(WaitUntil(WatcherThreadsSleep));
  (*watcher)->Hurry();
  TimeOutAReceive(*contexts[0], 1);
  const absl::Time closed = absl::Now();
  EXPECT_THAT(reported.WaitFor(1), ElementsAre(1));
  // About 50 ms, unless the machine is very busy.
  EXPECT_LT(absl::Now() - closed, absl::Milliseconds(500));
}

// An exception thrown by on_closed would end the process from the watcher's thread: it is reported
// instead, and the other peers still are.
TEST(GlooPairWatcherTest, WatchesOnWhenOnClosedThrows) {
  constexpr int kSize = 3;
  InMemoryStore store;
  auto contexts = ConnectGlooContexts(kSize, store, absl::Seconds(20));
  for (const auto& context : contexts) ASSERT_NE(context, nullptr);
  Reported reported;
  absl::StatusOr<std::unique_ptr<GlooPairWatcher>> watcher = GlooPairWatcher::Start(
      *contexts[0],
      [&](int peer) {
        reported.Add(peer);
        throw std::runtime_error("on_closed failed");
      },
      [] { return true; });
  ASSERT_TRUE(watcher.ok()) << watcher.status();
  (*watcher)->Hurry();
  contexts[2].reset();
  EXPECT_THAT(reported.WaitFor(1), ElementsAre(2));
  contexts[1].reset();
  EXPECT_THAT(reported.WaitFor(2), ElementsAre(2, 1));
}

// A watcher started after a pair has closed says it watches only the others, and why.
TEST(GlooPairWatcherTest, CoverageSaysWhenSomePairsAreNotWatched) {
  constexpr int kSize = 3;
  InMemoryStore store;
  auto contexts = ConnectGlooContexts(kSize, store, absl::Seconds(20));
  for (const auto& context : contexts) ASSERT_NE(context, nullptr);
  contexts[2].reset();
  ASSERT_TRUE(WaitUntil([&] { return FindGlooPairSockets(*contexts[0]).size() == 1; }));
  absl::StatusOr<std::unique_ptr<GlooPairWatcher>> watcher =
      GlooPairWatcher::Start(*contexts[0], [](int) {});
  ASSERT_TRUE(watcher.ok()) << watcher.status();
  const absl::Status& coverage = (*watcher)->coverage();
  EXPECT_EQ(coverage.code(), absl::StatusCode::kFailedPrecondition) << coverage;
  EXPECT_THAT(coverage.message(), HasSubstr("found the sockets of 1 of 2"));
  EXPECT_THAT(coverage.message(), HasSubstr("the others had closed"));
}

}  // namespace
}  // namespace mimo::comm
