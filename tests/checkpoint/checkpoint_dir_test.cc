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
using ::testing::Not;

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
  std::ofstream(LatestFile(root_)) << "hundred\n";
  auto bad = LatestCheckpoint(root_);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kDataLoss);
  // One line (mimo-convert prints each line of a message as an error of its own).
  EXPECT_THAT(bad.status().message(), HasSubstr("does not hold a step number: \"hundred\""));
  EXPECT_THAT(bad.status().message(), Not(HasSubstr("\n")));
  std::ofstream(LatestFile(root_)) << "300\n";
  auto missing = LatestCheckpoint(root_);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(missing.status().message(), HasSubstr("iter_0000300 does not exist"));
}

// Staging folders of saves of earlier steps that died, and what retention set aside, are cleared
// by the next save; a replaced checkpoint is cleared once its successor is in place, or when it
// is not the latest's (only the latest's is put back under its name).
TEST_F(CheckpointDirTest, TheNextSaveClearsWhatEarlierSavesLeft) {
  Save(100, "a");
  Save(137, "half", /*crash=*/true);    // An off-schedule save, killed.
  Save(1037, "later", /*crash=*/true);  // A later step's: perhaps still being written.
  fs::create_directory(root_ + "/.iter_0000050.deleting");
  fs::create_directory(CheckpointDir(root_, 100) + ".replaced");
  fs::create_directory(CheckpointDir(root_, 70) + ".replaced");  // Half removed, not the latest.
  Save(200, "b");
  EXPECT_FALSE(fs::exists(StagingDir(root_, 137)));
  EXPECT_TRUE(fs::exists(StagingDir(root_, 1037)));
  EXPECT_FALSE(fs::exists(root_ + "/.iter_0000050.deleting"));
  EXPECT_FALSE(fs::exists(CheckpointDir(root_, 100) + ".replaced"));
  EXPECT_FALSE(fs::exists(CheckpointDir(root_, 70) + ".replaced"));
  EXPECT_FALSE(fs::exists(CheckpointDir(root_, 70)));
  EXPECT_THAT(*ListCheckpoints(root_), ElementsAre(100, 200));
}

// An old checkpoint that cannot be removed fails neither the commit nor the latest pointer: here
// it cannot be set aside (a non-empty folder already holds its aside name, as a removal that
// failed half-way would leave it between two saves).
TEST_F(CheckpointDirTest, ARetentionThatCannotRemoveKeepsTheCommit) {
  Save(10, "x");
  fs::create_directory(root_ + "/.iter_0000010.deleting");
  std::ofstream(root_ + "/.iter_0000010.deleting/held") << "held";
  fs::create_directory(StagingDir(root_, 20));
  std::vector<std::string> not_removed;
  ASSERT_TRUE(CommitCheckpoint(root_, 20, /*keep=*/1, &not_removed).ok());
  EXPECT_EQ(*LatestCheckpoint(root_), 20);
  ASSERT_EQ(not_removed.size(), 1u);
  EXPECT_THAT(not_removed[0], HasSubstr("cannot set aside"));
  EXPECT_THAT(*ListCheckpoints(root_), ElementsAre(10, 20));  // Left for the next save.
  Save(30, "y", false, /*keep=*/1);  // Which clears the aside folder first, then removes both.
  EXPECT_THAT(*ListCheckpoints(root_), ElementsAre(30));
}

// A commit replacing the latest step's checkpoint that died between its two renames: readers
// find the old checkpoint aside and change nothing (a converter or another rank may read while the
// run saves); the run's next save puts it back under its name.
TEST_F(CheckpointDirTest, AReplacementThatDiedBetweenItsRenamesLeavesTheOldCheckpointReadable) {
  Save(100, "a");
  const std::string aside = CheckpointDir(root_, 100) + ".replaced";
  fs::rename(CheckpointDir(root_, 100), aside);
  auto latest = LatestCheckpoint(root_);
  ASSERT_TRUE(latest.ok()) << latest.status();
  EXPECT_EQ(**latest, 100);
  EXPECT_EQ(CommittedCheckpointFolder(root_, 100), aside);
  EXPECT_TRUE(fs::exists(aside));  // Untouched by the readers.
  EXPECT_FALSE(fs::exists(CheckpointDir(root_, 100)));
  ASSERT_TRUE(PrepareStaging(root_, 200).ok());
  EXPECT_FALSE(fs::exists(aside));
  EXPECT_EQ(CommittedCheckpointFolder(root_, 100), CheckpointDir(root_, 100));
  EXPECT_EQ(Read(100), "a");
}

}  // namespace
}  // namespace mimo::checkpoint
