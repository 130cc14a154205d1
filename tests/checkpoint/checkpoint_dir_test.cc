// Checkpoint folders: a committed step becomes the latest; a save that dies before its commit
// (files in staging) leaves the previous checkpoint the latest and loadable, and the next save
// clears it; retention keeps the newest; a step saved twice is replaced; a damaged latest file
// or a missing folder gives a clear error.
#include "checkpoint/checkpoint_dir.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

namespace mimo::checkpoint {
namespace {

namespace fs = std::filesystem;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

class CheckpointDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = ::testing::TempDir() + "/ckpt-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name();
    fs::remove_all(root_);
  }
  void TearDown() override { fs::remove_all(root_); }

  // A save of `step`: a rank's file in staging, then (unless `crash`) the commit.
  void Save(int64_t step, const std::string& contents, bool crash = false, int keep = 0) {
    auto staging = PrepareStaging(root_, step);
    ASSERT_TRUE(staging.ok()) << staging.status();
    std::ofstream(*staging + "/rank_00000.safetensors") << contents;
    if (!crash) {
      ASSERT_TRUE(CommitCheckpoint(root_, step, keep).ok());
    }
  }
  std::string Read(int64_t step) {
    std::ifstream in(CheckpointDir(root_, step) + "/rank_00000.safetensors");
    return std::string(std::istreambuf_iterator<char>(in), {});
  }

  std::string root_;
};

TEST_F(CheckpointDirTest, CommitsAndPointsLatestAtTheStep) {
  auto none = LatestCheckpoint(root_);
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
  Save(100, "a");
  EXPECT_EQ(CheckpointDir(root_, 100), root_ + "/iter_0000100");
  EXPECT_EQ(*LatestCheckpoint(root_), 100);
  EXPECT_EQ(Read(100), "a");
  EXPECT_FALSE(fs::exists(StagingDir(root_, 100)));
  Save(200, "b");
  EXPECT_EQ(*LatestCheckpoint(root_), 200);
  EXPECT_THAT(*ListCheckpoints(root_), ElementsAre(100, 200));
}

TEST_F(CheckpointDirTest, ASaveThatDiesLeavesThePreviousOneLatest) {
  Save(100, "a");
  Save(200, "half", /*crash=*/true);
  EXPECT_EQ(*LatestCheckpoint(root_), 100);
  EXPECT_EQ(Read(100), "a");
  EXPECT_THAT(*ListCheckpoints(root_), ElementsAre(100));  // Staging is not a checkpoint.
  Save(200, "b");  // The next save clears the stale staging folder.
  EXPECT_EQ(Read(200), "b");
  EXPECT_EQ(*LatestCheckpoint(root_), 200);
  EXPECT_EQ(CommitCheckpoint(root_, 300).code(), absl::StatusCode::kFailedPrecondition);
  // Dying between the commit's rename and the latest file's update: the folder is there, the
  // latest still names 200, which still loads; saving 300 again replaces the orphan.
  Save(300, "orphan", /*crash=*/true);
  fs::rename(StagingDir(root_, 300), CheckpointDir(root_, 300));
  EXPECT_EQ(*LatestCheckpoint(root_), 200);
  EXPECT_EQ(Read(200), "b");
  Save(300, "c");
  EXPECT_EQ(*LatestCheckpoint(root_), 300);
  EXPECT_EQ(Read(300), "c");
}

TEST_F(CheckpointDirTest, KeepsTheNewestAndReplacesAStepSavedAgain) {
  for (int64_t step : {10, 20, 30, 40}) Save(step, "x", false, /*keep=*/2);
  EXPECT_THAT(*ListCheckpoints(root_), ElementsAre(30, 40));
  Save(30, "again", false, 2);  // Resumed from 30 and saved 30 again: the latest is 30.
  EXPECT_EQ(*LatestCheckpoint(root_), 30);
  EXPECT_EQ(Read(30), "again");
  EXPECT_THAT(*ListCheckpoints(root_), ElementsAre(30, 40));
  EXPECT_EQ(CheckpointDir(root_, 12345678), root_ + "/iter_12345678");
}

TEST_F(CheckpointDirTest, DamagedLatestFileOrMissingFolderIsAClearError) {
  Save(100, "a");
  std::ofstream(LatestFile(root_)) << "hundred";
  auto bad = LatestCheckpoint(root_);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(bad.status().message(), HasSubstr("does not hold a step number"));
  std::ofstream(LatestFile(root_)) << "300\n";
  auto missing = LatestCheckpoint(root_);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(missing.status().message(), HasSubstr("iter_0000300 does not exist"));
}

}  // namespace
}  // namespace mimo::checkpoint
