// JobStore: jobs, events, logs, idempotency, paging, concurrency, schema versions and durability.
#include "coordinator/job_store.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <latch>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/status_macros.h"
#include "google/protobuf/util/message_differencer.h"

namespace mimo::coordinator {
namespace {

using ::google::protobuf::util::MessageDifferencer;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;
using ::testing::Pair;
using ::testing::SizeIs;

// Asserts that `rexpr` (an absl::StatusOr) is OK and moves its value into `lhs`.
#define ASSERT_OK_AND_ASSIGN(lhs, rexpr) \
  ASSERT_OK_AND_ASSIGN_IMPL_(MIMO_STATUS_CONCAT_(statusor_, __LINE__), lhs, rexpr)
#define ASSERT_OK_AND_ASSIGN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                               \
  ASSERT_TRUE(statusor.ok()) << statusor.status();       \
  lhs = std::move(statusor).value()

// 2026-11-23 12:00:00 UTC.
constexpr absl::Time kNow = absl::FromUnixSeconds(1795435200);

v1::JobSpec Spec(const std::string& name = "train") {
  v1::JobSpec spec;
  spec.set_name(name);
  spec.set_kind(v1::JobSpec::KIND_TRAIN);
  return spec;
}

std::vector<std::string> Ids(const std::vector<v1::Job>& jobs) {
  std::vector<std::string> ids;
  for (const v1::Job& job : jobs) ids.push_back(job.id());
  return ids;
}

std::vector<std::string> Texts(const std::vector<v1::LogLine>& lines) {
  std::vector<std::string> texts;
  for (const v1::LogLine& line : lines) texts.push_back(line.text());
  return texts;
}

std::vector<int64_t> Sequences(const std::vector<v1::LogLine>& lines) {
  std::vector<int64_t> sequences;
  for (const v1::LogLine& line : lines) sequences.push_back(line.sequence());
  return sequences;
}

// A database file under the test temp folder, removed (with its WAL files) afterwards.
struct TempDb {
  TempDb() {
    static std::atomic<int> counter{0};
    path = absl::StrCat(::testing::TempDir(), "job_store_test_", getpid(), "_",
                        ::testing::UnitTest::GetInstance()->current_test_info()->name(), "_",
                        counter++, ".db");
  }
  ~TempDb() {
    for (const char* suffix : {"", "-wal", "-shm", "-journal"}) {
      std::remove(absl::StrCat(path, suffix).c_str());
    }
  }
  std::string path;
};

// Runs `sql` on `path` through a connection of its own; returns the first column of the last row.
std::string RawSql(const std::string& path, const std::string& sql) {
  sqlite3* db = nullptr;
  EXPECT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  std::string result;
  auto keep = [](void* out, int, char** values, char**) {
    *static_cast<std::string*>(out) = values[0] != nullptr ? values[0] : "";
    return 0;
  };
  EXPECT_EQ(sqlite3_exec(db, sql.c_str(), keep, &result, nullptr), SQLITE_OK) << sqlite3_errmsg(db);
  sqlite3_close(db);
  return result;
}

class JobStoreTest : public ::testing::Test {
 protected:
  void SetUp() override { OpenStore(":memory:"); }

  void OpenStore(const std::string& path, JobStore::Options options = {}) {
    options.path = path;
    store_.reset();
    ASSERT_OK_AND_ASSIGN(store_, JobStore::Open(options));
  }

  v1::Job Create(absl::Time now = kNow, const std::string& request_id = "") {
    absl::StatusOr<JobStore::Created> created = store_->CreateJob(Spec(), request_id, now);
    EXPECT_TRUE(created.ok()) << created.status();
    return created.ok() ? created->job : v1::Job();
  }

  // Moves `job` to `state` (without checking the transition, which is not the store's job).
  v1::Job SetState(v1::Job job, v1::JobState state) {
    job.set_state(state);
    v1::JobEvent event;
    event.set_state(state);
    EXPECT_TRUE(store_->UpdateJob(job, event).ok());
    return job;
  }

  std::unique_ptr<JobStore> store_;
};

TEST_F(JobStoreTest, CreateStoresPendingJobWithSubmittedEvent) {
  ASSERT_OK_AND_ASSIGN(JobStore::Created created, store_->CreateJob(Spec("a"), "req", kNow));
  EXPECT_TRUE(created.created);
  const v1::Job& job = created.job;
  EXPECT_EQ(job.id(), "j-20261123-000001");
  EXPECT_EQ(job.spec().name(), "a");
  EXPECT_EQ(job.state(), v1::JOB_STATE_PENDING);
  EXPECT_EQ(job.attempt(), 1);
  EXPECT_EQ(job.request_id(), "req");
  EXPECT_EQ(job.create_time().seconds(), absl::ToUnixSeconds(kNow));
  EXPECT_EQ(job.update_time().seconds(), absl::ToUnixSeconds(kNow));

  ASSERT_OK_AND_ASSIGN(v1::Job stored, store_->GetJob(job.id()));
  EXPECT_TRUE(MessageDifferencer::Equals(stored, job)) << stored.DebugString();
  ASSERT_OK_AND_ASSIGN(std::vector<v1::JobEvent> events, store_->ListEvents(job.id(), 0));
  ASSERT_THAT(events, SizeIs(1));
  EXPECT_EQ(events[0].sequence(), 1);
  EXPECT_EQ(events[0].state(), v1::JOB_STATE_PENDING);
  EXPECT_EQ(events[0].message(), "submitted");
  EXPECT_EQ(events[0].time().seconds(), absl::ToUnixSeconds(kNow));
}

TEST_F(JobStoreTest, UpdateReplacesJobAndAppendsEvents) {
  v1::Job job = Create();
  job.set_state(v1::JOB_STATE_SCHEDULED);
  job.set_state_reason("placed");
  job.mutable_update_time()->set_seconds(absl::ToUnixSeconds(kNow) + 5);
  v1::JobEvent untimed;
  untimed.set_state(v1::JOB_STATE_SCHEDULED);
  ASSERT_OK_AND_ASSIGN(v1::JobEvent second, store_->UpdateJob(job, untimed));
  EXPECT_EQ(second.sequence(), 2);
  EXPECT_TRUE(MessageDifferencer::Equals(second.time(), job.update_time()));

  job.mutable_progress()->set_step(10);
  v1::JobEvent timed;
  timed.mutable_metrics()->set_step(10);
  timed.mutable_time()->set_seconds(7);
  ASSERT_OK_AND_ASSIGN(v1::JobEvent third, store_->UpdateJob(job, timed));
  EXPECT_EQ(third.sequence(), 3);
  EXPECT_EQ(third.time().seconds(), 7);

  ASSERT_OK_AND_ASSIGN(v1::Job stored, store_->GetJob(job.id()));
  EXPECT_TRUE(MessageDifferencer::Equals(stored, job)) << stored.DebugString();
  ASSERT_OK_AND_ASSIGN(std::vector<v1::JobEvent> after_first, store_->ListEvents(job.id(), 1));
  ASSERT_THAT(after_first, SizeIs(2));
  EXPECT_TRUE(MessageDifferencer::Equals(after_first[0], second));
  EXPECT_TRUE(MessageDifferencer::Equals(after_first[1], third));
  ASSERT_OK_AND_ASSIGN(std::vector<v1::JobEvent> none, store_->ListEvents(job.id(), 3));
  EXPECT_THAT(none, IsEmpty());
  ASSERT_OK_AND_ASSIGN(const int64_t last, store_->LastEventSequence(job.id()));
  EXPECT_EQ(last, 3);
  EXPECT_EQ(store_->LastEventSequence("j-19700101-000009").status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(JobStoreTest, SaveReplacesJobWithoutAnEvent) {
  v1::Job job = Create();
  job.add_succeeded_ranks(3);
  job.add_succeeded_ranks(0);
  ASSERT_TRUE(store_->SaveJob(job).ok());
  ASSERT_OK_AND_ASSIGN(v1::Job stored, store_->GetJob(job.id()));
  EXPECT_TRUE(MessageDifferencer::Equals(stored, job)) << stored.DebugString();
  ASSERT_OK_AND_ASSIGN(const int64_t last, store_->LastEventSequence(job.id()));
  EXPECT_EQ(last, 1);  // Only "submitted".
}

TEST_F(JobStoreTest, IdsCountUpAndUseTheUtcDateOfCreation) {
  EXPECT_EQ(Create(kNow + absl::Hours(11) + absl::Minutes(59)).id(), "j-20261123-000001");
  EXPECT_EQ(Create(kNow + absl::Hours(12)).id(), "j-20261124-000002");
  EXPECT_EQ(Create(kNow).id(), "j-20261123-000003");
}

TEST_F(JobStoreTest, TimestampsKeepNanosecondsBeforeAndAfterTheEpoch) {
  const v1::Job after = Create(absl::FromUnixNanos(1'795'435'200'123'456'789));
  EXPECT_EQ(after.create_time().seconds(), 1'795'435'200);
  EXPECT_EQ(after.create_time().nanos(), 123'456'789);
  const v1::Job before = Create(absl::FromUnixNanos(-1'500'000'000));
  EXPECT_EQ(before.id(), "j-19691231-000002");
  EXPECT_EQ(before.create_time().seconds(), -2);
  EXPECT_EQ(before.create_time().nanos(), 500'000'000);
}

TEST_F(JobStoreTest, SameRequestIdReturnsTheEarlierJobWithinTtl) {
  ASSERT_OK_AND_ASSIGN(JobStore::Created first, store_->CreateJob(Spec("a"), "r1", kNow));
  ASSERT_OK_AND_ASSIGN(
      JobStore::Created again,
      store_->CreateJob(Spec("a"), "r1", kNow + absl::Hours(24) - absl::Seconds(1)));
  EXPECT_FALSE(again.created);
  EXPECT_TRUE(MessageDifferencer::Equals(again.job, first.job));
  // The same key on another spec is refused, and creates nothing.
  const absl::StatusOr<JobStore::Created> reused = store_->CreateJob(Spec("b"), "r1", kNow);
  EXPECT_EQ(reused.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(reused.status().message(), HasSubstr(first.job.id()));
  ASSERT_OK_AND_ASSIGN(JobStore::Created other, store_->CreateJob(Spec("c"), "r2", kNow));
  EXPECT_TRUE(other.created);
  EXPECT_NE(other.job.id(), first.job.id());
  EXPECT_NE(Create(kNow, "").id(), Create(kNow, "").id());
  ASSERT_OK_AND_ASSIGN(auto counts, store_->CountByState());
  EXPECT_THAT(counts, ElementsAre(Pair(v1::JOB_STATE_PENDING, 4)));
}

TEST_F(JobStoreTest, ExpiredRequestIdCreatesANewJobAndIsReplaced) {
  OpenStore(":memory:", {.request_id_ttl = absl::Minutes(10)});
  const v1::Job first = Create(kNow, "r");
  const absl::Time later = kNow + absl::Minutes(10);
  ASSERT_OK_AND_ASSIGN(JobStore::Created renewed, store_->CreateJob(Spec(), "r", later));
  EXPECT_TRUE(renewed.created);
  EXPECT_NE(renewed.job.id(), first.id());
  ASSERT_OK_AND_ASSIGN(JobStore::Created again,
                       store_->CreateJob(Spec(), "r", later + absl::Minutes(5)));
  EXPECT_FALSE(again.created);
  EXPECT_EQ(again.job.id(), renewed.job.id());
}

TEST_F(JobStoreTest, PurgedRequestIdsAreForgotten) {
  const v1::Job old_job = Create(kNow, "old");
  const v1::Job new_job = Create(kNow + absl::Minutes(1), "new");
  ASSERT_TRUE(store_->PurgeRequestIds(kNow + absl::Seconds(30)).ok());
  ASSERT_OK_AND_ASSIGN(JobStore::Created old_again, store_->CreateJob(Spec(), "old", kNow));
  EXPECT_TRUE(old_again.created);
  ASSERT_OK_AND_ASSIGN(JobStore::Created new_again, store_->CreateJob(Spec(), "new", kNow));
  EXPECT_FALSE(new_again.created);
  EXPECT_EQ(new_again.job.id(), new_job.id());
}

TEST_F(JobStoreTest, DeleteFinishedJobsTakesOnlyEndedJobsLastUpdatedBeforeTheCutoff) {
  const v1::Job succeeded = SetState(Create(kNow, "succeeded"), v1::JOB_STATE_SUCCEEDED);
  const v1::Job failed = SetState(Create(kNow), v1::JOB_STATE_FAILED);
  const v1::Job cancelled = SetState(Create(kNow), v1::JOB_STATE_CANCELLED);
  const v1::Job running = SetState(Create(kNow), v1::JOB_STATE_RUNNING);
  const v1::Job cancelling = SetState(Create(kNow), v1::JOB_STATE_CANCELLING);
  const v1::Job pending = Create(kNow, "pending");
  v1::Job recent = Create(kNow);
  recent.mutable_update_time()->set_seconds(absl::ToUnixSeconds(kNow + absl::Hours(1)));
  recent = SetState(recent, v1::JOB_STATE_SUCCEEDED);
  for (const v1::Job& job : {succeeded, failed, running, recent}) {
    ASSERT_TRUE(store_->AppendLogs(job.id(), 1, 0, {"line"}, kNow).ok());
  }

  ASSERT_OK_AND_ASSIGN(const int64_t deleted, store_->DeleteFinishedJobs(kNow + absl::Minutes(30)));
  EXPECT_EQ(deleted, 3);
  for (const v1::Job& gone : {succeeded, failed, cancelled}) {
    SCOPED_TRACE(gone.id());
    EXPECT_EQ(store_->GetJob(gone.id()).status().code(), absl::StatusCode::kNotFound);
    EXPECT_EQ(store_->ListEvents(gone.id(), 0).status().code(), absl::StatusCode::kNotFound);
    EXPECT_EQ(store_->ReadLogs({.job_id = gone.id()}).status().code(), absl::StatusCode::kNotFound);
  }
  for (const v1::Job& kept : {running, cancelling, pending, recent}) {
    SCOPED_TRACE(kept.id());
    ASSERT_OK_AND_ASSIGN(const v1::Job stored, store_->GetJob(kept.id()));
    EXPECT_EQ(stored.state(), kept.state());
    ASSERT_OK_AND_ASSIGN(const std::vector<v1::JobEvent> events, store_->ListEvents(kept.id(), 0));
    EXPECT_THAT(events, Not(IsEmpty()));
  }
  ASSERT_OK_AND_ASSIGN(const auto recent_logs, store_->ReadLogs({.job_id = recent.id()}));
  EXPECT_THAT(Texts(recent_logs), ElementsAre("line"));
  ASSERT_OK_AND_ASSIGN(const JobStore::Page page, store_->ListJobs(0, "", {}));
  EXPECT_THAT(page.jobs, SizeIs(4));
  // The deleted job's request id went with it; a kept job's still answers.
  ASSERT_OK_AND_ASSIGN(JobStore::Created again, store_->CreateJob(Spec(), "succeeded", kNow));
  EXPECT_TRUE(again.created);
  ASSERT_OK_AND_ASSIGN(JobStore::Created same, store_->CreateJob(Spec(), "pending", kNow));
  EXPECT_FALSE(same.created);
  EXPECT_EQ(same.job.id(), pending.id());
  ASSERT_OK_AND_ASSIGN(const int64_t none, store_->DeleteFinishedJobs(kNow + absl::Minutes(30)));
  EXPECT_EQ(none, 0);
}

// More jobs than one transaction takes (1000) are all deleted, in batches.
TEST_F(JobStoreTest, DeleteFinishedJobsGoesOnPastOneBatch) {
  for (int i = 0; i < 1003; ++i) SetState(Create(kNow), v1::JOB_STATE_SUCCEEDED);
  const v1::Job running = SetState(Create(kNow), v1::JOB_STATE_RUNNING);
  ASSERT_OK_AND_ASSIGN(const int64_t deleted, store_->DeleteFinishedJobs(kNow + absl::Hours(1)));
  EXPECT_EQ(deleted, 1003);
  ASSERT_OK_AND_ASSIGN(const JobStore::Page page, store_->ListJobs(0, "", {}));
  ASSERT_THAT(page.jobs, SizeIs(1));
  EXPECT_EQ(page.jobs[0].id(), running.id());
}

TEST_F(JobStoreTest, ListJobsPagesNewestFirstVisitingEachJobOnce) {
  std::vector<std::string> newest_first;
  for (int i = 0; i < 25; ++i) newest_first.insert(newest_first.begin(), Create().id());
  std::vector<std::string> seen;
  std::vector<size_t> page_sizes;
  std::string token;
  do {
    ASSERT_OK_AND_ASSIGN(JobStore::Page page, store_->ListJobs(7, token, {}));
    for (const std::string& id : Ids(page.jobs)) seen.push_back(id);
    page_sizes.push_back(page.jobs.size());
    token = page.next_page_token;
    ASSERT_LE(page_sizes.size(), 4u);
  } while (!token.empty());
  EXPECT_THAT(page_sizes, ElementsAre(7u, 7u, 7u, 4u));
  EXPECT_EQ(seen, newest_first);
}

TEST_F(JobStoreTest, ListJobsDefaultsToFiftyAndAcceptsAThousand) {
  for (int i = 0; i < 51; ++i) Create();
  ASSERT_OK_AND_ASSIGN(JobStore::Page page, store_->ListJobs(0, "", {}));
  EXPECT_THAT(page.jobs, SizeIs(50));
  EXPECT_FALSE(page.next_page_token.empty());
  ASSERT_OK_AND_ASSIGN(JobStore::Page all, store_->ListJobs(1000, "", {}));
  EXPECT_THAT(all.jobs, SizeIs(51));
  EXPECT_EQ(all.next_page_token, "");
}

TEST_F(JobStoreTest, ListJobsFiltersByState) {
  std::vector<v1::Job> jobs;
  for (int i = 0; i < 5; ++i) jobs.push_back(Create());
  SetState(jobs[1], v1::JOB_STATE_RUNNING);
  SetState(jobs[3], v1::JOB_STATE_RUNNING);
  SetState(jobs[4], v1::JOB_STATE_FAILED);

  ASSERT_OK_AND_ASSIGN(JobStore::Page running, store_->ListJobs(0, "", {v1::JOB_STATE_RUNNING}));
  EXPECT_THAT(Ids(running.jobs), ElementsAre(jobs[3].id(), jobs[1].id()));
  EXPECT_EQ(running.jobs[0].state(), v1::JOB_STATE_RUNNING);
  ASSERT_OK_AND_ASSIGN(JobStore::Page first,
                       store_->ListJobs(2, "", {v1::JOB_STATE_PENDING, v1::JOB_STATE_FAILED}));
  EXPECT_THAT(Ids(first.jobs), ElementsAre(jobs[4].id(), jobs[2].id()));
  ASSERT_OK_AND_ASSIGN(
      JobStore::Page rest,
      store_->ListJobs(2, first.next_page_token, {v1::JOB_STATE_PENDING, v1::JOB_STATE_FAILED}));
  EXPECT_THAT(Ids(rest.jobs), ElementsAre(jobs[0].id()));
  EXPECT_EQ(rest.next_page_token, "");
  ASSERT_OK_AND_ASSIGN(JobStore::Page none, store_->ListJobs(0, "", {v1::JOB_STATE_CANCELLED}));
  EXPECT_THAT(none.jobs, IsEmpty());
}

TEST_F(JobStoreTest, ListJobsRejectsBadPageSizesAndTokens) {
  Create();
  EXPECT_EQ(store_->ListJobs(-1, "", {}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store_->ListJobs(1001, "", {}).status().code(), absl::StatusCode::kInvalidArgument);
  for (const char* token : {"abc", "-3", "0", "+3", " 3", "3 ", "3x", "99999999999999999999"}) {
    EXPECT_EQ(store_->ListJobs(10, token, {}).status().code(), absl::StatusCode::kInvalidArgument)
        << token;
  }
}

TEST_F(JobStoreTest, LogsFilterByRankTailAndAfterSequence) {
  const v1::Job job = Create();
  const v1::Job other = Create();
  const absl::Time time = kNow + absl::Seconds(3);
  ASSERT_TRUE(store_->AppendLogs(job.id(), 1, 0, {"a0", "b0"}, time).ok());
  ASSERT_TRUE(store_->AppendLogs(job.id(), 1, 1, {"a1"}, time).ok());
  ASSERT_TRUE(store_->AppendLogs(job.id(), 1, 0, {"c0"}, time).ok());
  ASSERT_TRUE(store_->AppendLogs(job.id(), 1, 0, {}, time).ok());
  ASSERT_TRUE(store_->AppendLogs(other.id(), 1, 0, {"x"}, time).ok());

  ASSERT_OK_AND_ASSIGN(std::vector<v1::LogLine> all, store_->ReadLogs({.job_id = job.id()}));
  EXPECT_THAT(Texts(all), ElementsAre("a0", "b0", "a1", "c0"));
  EXPECT_THAT(Sequences(all), ElementsAre(1, 2, 3, 4));
  EXPECT_EQ(all[2].rank(), 1);
  EXPECT_EQ(all[2].attempt(), 1);
  EXPECT_EQ(all[2].time().seconds(), absl::ToUnixSeconds(time));

  ASSERT_OK_AND_ASSIGN(auto rank0, store_->ReadLogs({.job_id = job.id(), .rank = 0}));
  EXPECT_THAT(Sequences(rank0), ElementsAre(1, 2, 4));
  ASSERT_OK_AND_ASSIGN(auto tail,
                       store_->ReadLogs({.job_id = job.id(), .rank = 0, .tail_lines = 2}));
  EXPECT_THAT(Texts(tail), ElementsAre("b0", "c0"));
  ASSERT_OK_AND_ASSIGN(
      auto follow, store_->ReadLogs({.job_id = job.id(), .tail_lines = 1, .after_sequence = 2}));
  EXPECT_THAT(Texts(follow), ElementsAre("a1", "c0"));
  ASSERT_OK_AND_ASSIGN(auto other_lines, store_->ReadLogs({.job_id = other.id()}));
  EXPECT_THAT(Sequences(other_lines), ElementsAre(1));
}

TEST_F(JobStoreTest, LogsOfTheLatestAttemptByDefault) {
  v1::Job job = Create();
  ASSERT_TRUE(store_->AppendLogs(job.id(), 1, 0, {"first try"}, kNow).ok());
  ASSERT_OK_AND_ASSIGN(auto before_restart, store_->ReadLogs({.job_id = job.id()}));
  EXPECT_THAT(Texts(before_restart), ElementsAre("first try"));

  job.set_attempt(2);
  ASSERT_TRUE(store_->UpdateJob(job, v1::JobEvent()).ok());
  ASSERT_TRUE(store_->AppendLogs(job.id(), 2, 0, {"second try"}, kNow).ok());
  ASSERT_OK_AND_ASSIGN(auto latest, store_->ReadLogs({.job_id = job.id()}));
  EXPECT_THAT(Texts(latest), ElementsAre("second try"));
  EXPECT_THAT(Sequences(latest), ElementsAre(2));
  ASSERT_OK_AND_ASSIGN(auto first, store_->ReadLogs({.job_id = job.id(), .attempt = 1}));
  EXPECT_THAT(Texts(first), ElementsAre("first try"));
}

TEST_F(JobStoreTest, InvalidLogArguments) {
  const v1::Job job = Create();
  EXPECT_EQ(store_->AppendLogs(job.id(), 0, 0, {"x"}, kNow).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store_->AppendLogs(job.id(), 1, -1, {"x"}, kNow).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store_->ReadLogs({.job_id = job.id(), .attempt = -1}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(JobStoreTest, UnknownJobsAreNotFound) {
  Create();
  v1::Job ghost;
  ghost.set_id("j-20261123-000099");
  EXPECT_EQ(store_->GetJob(ghost.id()).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->UpdateJob(ghost, v1::JobEvent()).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->SaveJob(ghost).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->ListEvents(ghost.id(), 0).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->AppendLogs(ghost.id(), 1, 0, {"x"}, kNow).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->ReadLogs({.job_id = ghost.id()}).status().code(), absl::StatusCode::kNotFound);
  ASSERT_OK_AND_ASSIGN(auto counts, store_->CountByState());
  EXPECT_THAT(counts, ElementsAre(Pair(v1::JOB_STATE_PENDING, 1)));
}

TEST_F(JobStoreTest, CountByStateAndUnfinishedJobsOldestFirst) {
  std::vector<v1::Job> jobs;
  for (int i = 0; i < 7; ++i) jobs.push_back(Create());
  SetState(jobs[0], v1::JOB_STATE_SUCCEEDED);
  SetState(jobs[1], v1::JOB_STATE_RUNNING);
  SetState(jobs[2], v1::JOB_STATE_CANCELLING);
  SetState(jobs[3], v1::JOB_STATE_FAILED);
  SetState(jobs[4], v1::JOB_STATE_SCHEDULED);
  SetState(jobs[5], v1::JOB_STATE_CANCELLED);

  ASSERT_OK_AND_ASSIGN(std::vector<v1::Job> unfinished, store_->ListUnfinishedJobs());
  EXPECT_THAT(Ids(unfinished), ElementsAre(jobs[1].id(), jobs[2].id(), jobs[4].id(), jobs[6].id()));
  ASSERT_OK_AND_ASSIGN(auto counts, store_->CountByState());
  EXPECT_THAT(counts, ElementsAre(Pair(v1::JOB_STATE_PENDING, 1), Pair(v1::JOB_STATE_SCHEDULED, 1),
                                  Pair(v1::JOB_STATE_RUNNING, 1), Pair(v1::JOB_STATE_SUCCEEDED, 1),
                                  Pair(v1::JOB_STATE_FAILED, 1), Pair(v1::JOB_STATE_CANCELLING, 1),
                                  Pair(v1::JOB_STATE_CANCELLED, 1)));
}

TEST_F(JobStoreTest, EmptyStore) {
  ASSERT_OK_AND_ASSIGN(auto counts, store_->CountByState());
  EXPECT_THAT(counts, IsEmpty());
  ASSERT_OK_AND_ASSIGN(auto unfinished, store_->ListUnfinishedJobs());
  EXPECT_THAT(unfinished, IsEmpty());
  ASSERT_OK_AND_ASSIGN(JobStore::Page page, store_->ListJobs(0, "", {}));
  EXPECT_THAT(page.jobs, IsEmpty());
  EXPECT_EQ(page.next_page_token, "");
}

// Threads 0-49 share 10 request ids (five threads each), threads 50-99 have their own; they
// write through two connections to one file, so both the mutex and SQLite's locking are at work.
TEST_F(JobStoreTest, ConcurrentCreatesStoreEachJobExactlyOnce) {
  constexpr int kThreads = 100;
  TempDb db;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<JobStore> a, JobStore::Open({.path = db.path}));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<JobStore> b, JobStore::Open({.path = db.path}));
  auto request_id = [](int i) {
    return i < kThreads / 2 ? absl::StrCat("shared-", i % 10) : absl::StrCat("own-", i);
  };
  std::vector<absl::StatusOr<JobStore::Created>> results(kThreads);
  std::latch start(kThreads);
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      start.arrive_and_wait();
      results[i] = (i % 2 == 0 ? *a : *b).CreateJob(Spec(), request_id(i), kNow);
    });
  }
  for (std::thread& thread : threads) thread.join();

  std::map<std::string, std::set<std::string>> ids_by_request;
  std::map<std::string, int> created_by_request;
  for (int i = 0; i < kThreads; ++i) {
    ASSERT_TRUE(results[i].ok()) << results[i].status();
    EXPECT_EQ(results[i]->job.request_id(), request_id(i));
    ids_by_request[request_id(i)].insert(results[i]->job.id());
    created_by_request[request_id(i)] += results[i]->created;
  }
  EXPECT_THAT(ids_by_request, SizeIs(60));
  for (const auto& [request, ids] : ids_by_request) {
    EXPECT_THAT(ids, SizeIs(1)) << request;
    EXPECT_EQ(created_by_request[request], 1) << request;
  }
  ASSERT_OK_AND_ASSIGN(JobStore::Page page, a->ListJobs(1000, "", {}));
  const std::vector<std::string> listed = Ids(page.jobs);
  EXPECT_EQ(std::set<std::string>(listed.begin(), listed.end()).size(), 60u);
  ASSERT_OK_AND_ASSIGN(auto counts, b->CountByState());
  EXPECT_THAT(counts, ElementsAre(Pair(v1::JOB_STATE_PENDING, 60)));
}

TEST_F(JobStoreTest, ReopenKeepsJobsEventsLogsRequestIdsAndVersion) {
  TempDb db;
  OpenStore(db.path);
  v1::Job job = Create(kNow, "r");
  job.set_state(v1::JOB_STATE_SCHEDULED);
  ASSERT_TRUE(store_->UpdateJob(job, v1::JobEvent()).ok());
  ASSERT_TRUE(store_->AppendLogs(job.id(), 1, 2, {"hello"}, kNow).ok());

  OpenStore(db.path);
  ASSERT_OK_AND_ASSIGN(v1::Job stored, store_->GetJob(job.id()));
  EXPECT_TRUE(MessageDifferencer::Equals(stored, job)) << stored.DebugString();
  ASSERT_OK_AND_ASSIGN(auto events, store_->ListEvents(job.id(), 0));
  EXPECT_THAT(events, SizeIs(2));
  ASSERT_OK_AND_ASSIGN(auto lines, store_->ReadLogs({.job_id = job.id()}));
  EXPECT_THAT(Texts(lines), ElementsAre("hello"));
  ASSERT_OK_AND_ASSIGN(JobStore::Created again, store_->CreateJob(Spec(), "r", kNow));
  EXPECT_FALSE(again.created);
  EXPECT_EQ(again.job.id(), job.id());
  EXPECT_EQ(Create().id(), "j-20261123-000002");
  store_.reset();
  EXPECT_EQ(RawSql(db.path, "PRAGMA user_version"), absl::StrCat(JobStore::CurrentSchemaVersion()));
  EXPECT_EQ(RawSql(db.path, "PRAGMA journal_mode"), "wal");
}

TEST_F(JobStoreTest, DatabaseFromANewerSchemaIsRefusedAndLeftAlone) {
  TempDb db;
  const int future = JobStore::CurrentSchemaVersion() + 1;
  RawSql(db.path, absl::StrCat("PRAGMA user_version = ", future));
  absl::StatusOr<std::unique_ptr<JobStore>> store = JobStore::Open({.path = db.path});
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(store.status().message(), HasSubstr(absl::StrCat("schema version ", future)));
  EXPECT_THAT(store.status().message(),
              HasSubstr(absl::StrCat("up to ", JobStore::CurrentSchemaVersion())));
  EXPECT_EQ(RawSql(db.path, "PRAGMA user_version"), absl::StrCat(future));
}

TEST_F(JobStoreTest, OpenErrorsNameTheOperationAndSqliteMessage) {
  absl::StatusOr<std::unique_ptr<JobStore>> store =
      JobStore::Open({.path = "/nonexistent-mimo-dir/jobs.db"});
  ASSERT_FALSE(store.ok());
  EXPECT_THAT(store.status().message(), HasSubstr("open /nonexistent-mimo-dir/jobs.db"));
  EXPECT_THAT(store.status().message(), HasSubstr("unable to open database file"));
  EXPECT_EQ(JobStore::Open({.path = ""}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(JobStoreTest, CorruptStoredJobIsDataLoss) {
  TempDb db;
  OpenStore(db.path);
  const v1::Job job = Create();
  RawSql(db.path, "UPDATE jobs SET job = x'ff' WHERE seq = 1");
  EXPECT_EQ(store_->GetJob(job.id()).status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(store_->ListJobs(0, "", {}).status().code(), absl::StatusCode::kDataLoss);
}

// In a forked child: opens `path`, creates up to `jobs` jobs, writes each id to `fd` once
// CreateJob has returned, then _exits without closing the store.
[[noreturn]] void CreateJobsAndExit(const std::string& path, int jobs, int fd) {
  absl::StatusOr<std::unique_ptr<JobStore>> store = JobStore::Open({.path = path});
  if (!store.ok()) _exit(2);
  for (int i = 0; i < jobs; ++i) {
    absl::StatusOr<JobStore::Created> created = (*store)->CreateJob(Spec(), "", absl::Now());
    if (!created.ok()) _exit(3);
    const std::string line = created->job.id() + "\n";
    if (write(fd, line.data(), line.size()) != static_cast<ssize_t>(line.size())) _exit(4);
  }
  _exit(0);
}

struct ChildRun {
  std::vector<std::string> ids;  // Reported as stored.
  int wait_status = 0;
};

// Forks a child running CreateJobsAndExit. With kill_after > 0 the child is SIGKILLed as soon as
// it has reported that many ids (it is mid-way through creating more).
ChildRun RunChild(const std::string& path, int jobs, size_t kill_after) {
  int fds[2];
  if (pipe(fds) != 0) {
    ADD_FAILURE() << "pipe failed";
    return {};
  }
  const pid_t pid = fork();
  if (pid < 0) {
    ADD_FAILURE() << "fork failed";
    return {};
  }
  if (pid == 0) {
    close(fds[0]);
    CreateJobsAndExit(path, jobs, fds[1]);
  }
  close(fds[1]);
  std::string output;
  char buffer[512];
  bool killed = false;
  ssize_t n;
  while ((n = read(fds[0], buffer, sizeof(buffer))) > 0) {
    output.append(buffer, n);
    if (kill_after > 0 && !killed &&
        static_cast<size_t>(std::count(output.begin(), output.end(), '\n')) >= kill_after) {
      killed = kill(pid, SIGKILL) == 0;
    }
  }
  close(fds[0]);
  ChildRun run;
  EXPECT_EQ(waitpid(pid, &run.wait_status, 0), pid);
  // Only whole lines count: a line is written after its job is stored.
  for (absl::string_view line : absl::StrSplit(output, '\n')) {
    if (!line.empty()) run.ids.emplace_back(line);
  }
  if (!output.empty() && output.back() != '\n') run.ids.pop_back();
  return run;
}

TEST_F(JobStoreTest, JobsOfAChildThatExitsWithoutClosingAreStored) {
  TempDb db;
  const ChildRun run = RunChild(db.path, 10, 0);
  ASSERT_TRUE(WIFEXITED(run.wait_status) && WEXITSTATUS(run.wait_status) == 0) << run.wait_status;
  ASSERT_THAT(run.ids, SizeIs(10));
  OpenStore(db.path);
  for (const std::string& id : run.ids) EXPECT_TRUE(store_->GetJob(id).ok()) << id;
  ASSERT_OK_AND_ASSIGN(auto counts, store_->CountByState());
  EXPECT_THAT(counts, ElementsAre(Pair(v1::JOB_STATE_PENDING, 10)));
}

TEST_F(JobStoreTest, JobsOfAKilledChildAreStored) {
  TempDb db;
  const ChildRun run = RunChild(db.path, 100'000, 20);
  ASSERT_TRUE(WIFSIGNALED(run.wait_status) && WTERMSIG(run.wait_status) == SIGKILL)
      << run.wait_status;
  ASSERT_GE(run.ids.size(), 20u);
  OpenStore(db.path);
  for (const std::string& id : run.ids) EXPECT_TRUE(store_->GetJob(id).ok()) << id;
  // The child may have stored one more job than it got to report.
  ASSERT_OK_AND_ASSIGN(auto counts, store_->CountByState());
  EXPECT_GE(counts[v1::JOB_STATE_PENDING], static_cast<int64_t>(run.ids.size()));
  EXPECT_LE(counts[v1::JOB_STATE_PENDING], static_cast<int64_t>(run.ids.size()) + 1);
}

}  // namespace
}  // namespace mimo::coordinator
