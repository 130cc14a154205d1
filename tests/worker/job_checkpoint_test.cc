// SaveJobCheckpoint across ranks (threads) meeting in an in-memory store: a commit with every
// rank's files in metadata.json, and a rank whose part fails making the others fail at once,
// naming it, instead of at the store timeout.
#include "worker/job_checkpoint.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "comm/in_memory_store.h"
#include "nlohmann/json.hpp"

namespace mimo::worker {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

constexpr int kWorld = 3;
constexpr int64_t kIteration = 5;
// Far longer than any of these saves takes: a wait that reaches it is a failure of the test.
constexpr absl::Duration kTimeout = absl::Seconds(60);

v1::Assignment AssignmentOf(int rank, const std::string& dir) {
  v1::Assignment a;
  a.set_job_id("j-test");
  a.set_attempt(1);
  a.set_world_size(kWorld);
  a.mutable_spec()->mutable_checkpointing()->set_dir(dir);
  a.mutable_spec()->mutable_resources()->set_workers(kWorld);
  a.mutable_rank()->set_rank(rank);
  return a;
}

// Writes "rank_R.txt" into the staging folder, unless `failing` is this rank.
RankStateWriter WriterOf(int rank, int failing) {
  return [rank, failing](const std::string& staging)
             -> absl::StatusOr<std::map<std::string, checkpoint::FileDigest>> {
    if (rank == failing) return absl::ResourceExhaustedError("no space left on device");
    const std::string name = absl::StrCat("rank_", rank, ".txt");
    std::ofstream(fs::path(staging) / name) << "rank " << rank;
    return std::map<std::string, checkpoint::FileDigest>{
        {name, {.bytes = 6, .crc32c = static_cast<uint32_t>(rank)}}};
  };
}

struct Outcome {
  std::vector<absl::Status> status = std::vector<absl::Status>(kWorld);
  absl::Duration took;  // Until the last rank returned.
};

// Every rank saves iteration kIteration into `dir`; rank `failing` (-1: none) cannot write.
Outcome SaveAll(const std::string& dir, int failing) {
  comm::InMemoryStore store;
  Outcome out;
  const absl::Time start = absl::Now();
  std::vector<std::thread> threads;
  for (int r = 0; r < kWorld; ++r) {
    threads.emplace_back([&, r] {
      out.status[r] = SaveJobCheckpoint(AssignmentOf(r, dir), kIteration, 80, WriterOf(r, failing),
                                        &store, kTimeout);
    });
  }
  for (std::thread& t : threads) t.join();
  out.took = absl::Now() - start;
  return out;
}

class JobCheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           absl::StrCat("job_checkpoint_test_", getpid(), "_",
                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

TEST_F(JobCheckpointTest, RankZeroCommitsEveryRanksFiles) {
  const Outcome out = SaveAll(dir_ / "ckpt", -1);
  for (int r = 0; r < kWorld; ++r) EXPECT_TRUE(out.status[r].ok()) << r << ": " << out.status[r];
  std::ifstream latest(dir_ / "ckpt" / "latest_checkpointed_iteration.txt");
  std::string iteration;
  latest >> iteration;
  EXPECT_EQ(iteration, "5");
  std::ifstream metadata(dir_ / "ckpt" / "iter_0000005" / "metadata.json");
  const nlohmann::json json = nlohmann::json::parse(metadata, nullptr, false);
  ASSERT_TRUE(json.is_object());
  for (int r = 0; r < kWorld; ++r) {
    EXPECT_EQ(json["files"][absl::StrCat("rank_", r, ".txt")]["crc32c"], r);
  }
}

TEST_F(JobCheckpointTest, ARankThatCannotWriteFailsRankZeroAtOnceNamingIt) {
  const Outcome out = SaveAll(dir_ / "ckpt", 2);
  EXPECT_LT(out.took, absl::Seconds(10));  // Not the store's timeout.
  EXPECT_TRUE(absl::IsResourceExhausted(out.status[2])) << out.status[2];
  EXPECT_TRUE(out.status[1].ok()) << out.status[1];
  EXPECT_TRUE(absl::IsResourceExhausted(out.status[0])) << out.status[0];
  EXPECT_THAT(std::string(out.status[0].message()),
              HasSubstr("rank 2 could not write its files of checkpoint iteration 5: no space "
                        "left on device"));
  EXPECT_FALSE(fs::exists(dir_ / "ckpt" / "latest_checkpointed_iteration.txt"));
  EXPECT_FALSE(fs::exists(dir_ / "ckpt" / "iter_0000005"));
}

TEST_F(JobCheckpointTest, AStagingFolderRankZeroCannotMakeFailsEveryRankAtOnce) {
  fs::create_directories(dir_);
  std::ofstream(dir_ / "file") << "not a folder";
  const Outcome out = SaveAll(dir_ / "file" / "ckpt", -1);
  EXPECT_LT(out.took, absl::Seconds(10));
  for (int r = 0; r < kWorld; ++r) EXPECT_FALSE(out.status[r].ok()) << r;
  for (int r = 1; r < kWorld; ++r) {
    EXPECT_THAT(std::string(out.status[r].message()),
                HasSubstr("rank 0 could not prepare the staging folder of checkpoint iteration 5"))
        << r;
  }
}

TEST_F(JobCheckpointTest, TheFolderIsCheckedAtTheStart) {
  v1::JobSpec spec;
  EXPECT_TRUE(CheckCheckpointDirWritable(spec, 0).ok());  // No checkpoints: nothing to check.
  spec.mutable_checkpointing()->set_dir((dir_ / "a" / "ckpt").string());
  ASSERT_TRUE(CheckCheckpointDirWritable(spec, 3).ok());
  EXPECT_TRUE(fs::is_directory(dir_ / "a" / "ckpt"));
  EXPECT_TRUE(fs::is_empty(dir_ / "a" / "ckpt"));  // The probe is gone.
  // A plain file on the path: the audit's job only failed at its first save.
  std::ofstream(dir_ / "file") << "not a folder";
  spec.mutable_checkpointing()->set_dir((dir_ / "file" / "ckpt").string());
  const absl::Status status = CheckCheckpointDirWritable(spec, 0);
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
  EXPECT_THAT(std::string(status.message()),
              HasSubstr(absl::StrCat("checkpointing.dir ", (dir_ / "file" / "ckpt").string(),
                                     " cannot hold checkpoints")));
}

}  // namespace
}  // namespace mimo::worker
