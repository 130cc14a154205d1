// The rendezvous store over a real coordinator: values round-trip, waits time out naming the
// missing keys, a cancel ends a blocked wait at once, and keys survive a coordinator restart.
#include "worker/coordinator_store.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <thread>

#include "tests/worker/worker_test_util.h"

namespace mimo::worker::testing {
namespace {

using coordinator::testing::CoordinatorFixture;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

class CoordinatorStoreTest : public CoordinatorFixture {
 protected:
  // A scheduled one-rank job, so that its attempt's store exists.
  void SetUp() override {
    coordinator::ServerOptions o = coordinator::testing::FastOptions(db_path_);
    o.manager.reattach_grace = absl::Seconds(5);  // Room to re-set keys after a restart.
    StartServer(o);
    fake_ = std::make_unique<SilentRank>(Channel(), 0);
    job_ = Submit(LanguageOnlySpec(1, "store"));
    AwaitState(job_.id(), v1::JOB_STATE_SCHEDULED);
    CoordinatorClientOptions client_options;
    client_options.address = absl::StrCat("127.0.0.1:", server_->port());
    absl::StatusOr<std::unique_ptr<CoordinatorClient>> client =
        CoordinatorClient::Create(client_options);
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = *std::move(client);
  }
  void TearDown() override {
    fake_.reset();
    CoordinatorFixture::TearDown();
  }

  std::unique_ptr<SilentRank> fake_;
  v1::Job job_;
  std::unique_ptr<CoordinatorClient> client_;
};

TEST_F(CoordinatorStoreTest, SetThenWaitReturnsValuesInOrder) {
  CoordinatorStore store(client_.get(), job_.id(), job_.attempt());
  ASSERT_TRUE(store.Set("a", std::string("1\0x", 3)).ok());
  ASSERT_TRUE(store.Set("b", "2").ok());
  absl::StatusOr<std::vector<std::string>> values = store.Wait({"b", "a"}, absl::Seconds(1));
  ASSERT_TRUE(values.ok()) << values.status();
  EXPECT_THAT(*values, ElementsAre("2", std::string("1\0x", 3)));
  // Another attempt's keys are another store.
  CoordinatorStore other(client_.get(), job_.id(), job_.attempt() + 1);
  EXPECT_FALSE(other.Wait({"a"}, absl::Milliseconds(100)).ok());
}

TEST_F(CoordinatorStoreTest, WaitTimesOutNamingTheMissingKeys) {
  CoordinatorStore store(client_.get(), job_.id(), job_.attempt());
  ASSERT_TRUE(store.Set("here", "x").ok());
  const absl::StatusOr<std::vector<std::string>> values =
      store.Wait({"here", "missing"}, absl::Milliseconds(200));
  EXPECT_TRUE(absl::IsDeadlineExceeded(values.status())) << values.status();
  EXPECT_THAT(std::string(values.status().message()), HasSubstr("missing"));
}

TEST_F(CoordinatorStoreTest, CancelEndsABlockedWaitAtOnce) {
  CallCanceller canceller;
  CoordinatorStore store(client_.get(), job_.id(), job_.attempt(), &canceller);
  absl::Time ended;
  absl::Status status;
  std::thread waiter([&] {
    status = store.Wait({"never"}, absl::Seconds(30)).status();
    ended = absl::Now();
  });
  absl::SleepFor(absl::Milliseconds(200));
  const absl::Time cancelled = absl::Now();
  canceller.Cancel();
  waiter.join();
  EXPECT_TRUE(absl::IsCancelled(status)) << status;
  EXPECT_LT(ended - cancelled, absl::Seconds(1));
  // Later calls fail at once.
  EXPECT_TRUE(absl::IsCancelled(store.Set("k", "v")));
}

TEST_F(CoordinatorStoreTest, OwnKeysAreSetAgainAfterACoordinatorRestart) {
  CoordinatorStore store(client_.get(), job_.id(), job_.attempt());
  ASSERT_TRUE(store.Set("mine", "v").ok());
  absl::Status status;
  std::thread waiter([&] { status = store.Wait({"theirs"}, absl::Seconds(20)).status(); });
  absl::SleepFor(absl::Milliseconds(200));
  fake_.reset();
  StopServer();  // The keys are gone with it; the wait sees Unavailable and retries.
  StartServer(options_);
  // The restarted coordinator waits for the job's rank to re-register: the store is the job's.
  CoordinatorStore peer(client_.get(), job_.id(), job_.attempt());
  const absl::Time deadline = absl::Now() + absl::Seconds(5);
  absl::StatusOr<std::vector<std::string>> mine;
  do {
    mine = peer.Wait({"mine"}, absl::Milliseconds(200));
  } while (!mine.ok() && absl::Now() < deadline);
  ASSERT_TRUE(mine.ok()) << mine.status();
  EXPECT_THAT(*mine, ElementsAre("v"));
  ASSERT_TRUE(peer.Set("theirs", "w").ok());
  waiter.join();
  EXPECT_TRUE(status.ok()) << status;
}

}  // namespace
}  // namespace mimo::worker::testing
