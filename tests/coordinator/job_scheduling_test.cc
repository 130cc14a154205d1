// What a PENDING job says it waits for: workers of its kind (WaitingForWorkers), and another
// unfinished job using its checkpoint or output folder (NormalFolder, SharedFolders, FolderInUse).
#include "coordinator/job_scheduling.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

namespace mimo::coordinator {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;
using ::testing::Pair;
using ::testing::StrEq;

TEST(WaitingForWorkersTest, SaysHowManyRegisteredWithoutCountingIdleOnes) {
  EXPECT_EQ(WaitingForWorkers(2, v1::DEVICE_KIND_CUDA, 0, {}),
            "waiting for 2 CUDA workers: none registered");
  EXPECT_EQ(WaitingForWorkers(4, v1::DEVICE_KIND_CPU, 2, {}),
            "waiting for 4 CPU workers: 2 registered");
  EXPECT_EQ(WaitingForWorkers(4, v1::DEVICE_KIND_CPU, 4, {}),
            "waiting for 4 CPU workers: 4 registered, fewer than 4 idle");
  EXPECT_EQ(WaitingForWorkers(4, v1::DEVICE_KIND_CPU, 6, {}),
            "waiting for 4 CPU workers: 6 registered, fewer than 4 idle");
}

TEST(WaitingForWorkersTest, CountsWorkersThatNeverConfirmedTheirStop) {
  EXPECT_EQ(WaitingForWorkers(4, v1::DEVICE_KIND_CPU, 3, {"w-a on h, device 0"}),
            "waiting for 4 CPU workers: 3 registered (not counting 1 told to stop long ago and "
            "never confirming)");
  EXPECT_EQ(WaitingForWorkers(2, v1::DEVICE_KIND_CUDA, 0, {"w-a", "w-b"}),
            "waiting for 2 CUDA workers: none registered (not counting 2 told to stop long ago "
            "and never confirming)");
}

TEST(NormalFolderTest, SpellsAFolderOneWayLexically) {
  EXPECT_EQ(NormalFolder(""), "");
  EXPECT_EQ(NormalFolder("/"), "/");
  EXPECT_EQ(NormalFolder("/ckpt/run"), "/ckpt/run");
  EXPECT_EQ(NormalFolder("/ckpt/./run//"), "/ckpt/run");
  EXPECT_EQ(NormalFolder("//ckpt/run/"), "/ckpt/run");
  EXPECT_EQ(NormalFolder("/ckpt/other/../run"), "/ckpt/run");
  EXPECT_EQ(NormalFolder("./run/."), "run");
  EXPECT_EQ(NormalFolder("../run/"), "../run");
}

TEST(SharedFoldersTest, NamesTheSetFoldersNormalized) {
  v1::JobSpec spec;
  EXPECT_THAT(SharedFolders(spec), IsEmpty());
  spec.set_output_dir("/out/./a/");
  EXPECT_THAT(SharedFolders(spec), ElementsAre(Pair(StrEq("output_dir"), "/out/a")));
  spec.mutable_checkpointing()->set_dir("/ckpt//a");
  EXPECT_THAT(SharedFolders(spec), ElementsAre(Pair(StrEq("checkpointing.dir"), "/ckpt/a"),
                                               Pair(StrEq("output_dir"), "/out/a")));
}

v1::Job MakeJob(const std::string& id, v1::JobState state, const std::string& checkpoint_dir,
                const std::string& output_dir = "") {
  v1::Job job;
  job.set_id(id);
  job.set_state(state);
  job.mutable_spec()->mutable_checkpointing()->set_dir(checkpoint_dir);
  job.mutable_spec()->set_output_dir(output_dir);
  return job;
}

TEST(FolderInUseTest, AnEarlierOrScheduledJobWithTheFolderHoldsIt) {
  const std::vector<v1::Job> jobs = {
      MakeJob("j-1", v1::JOB_STATE_RUNNING, "/ckpt/a"),
      MakeJob("j-2", v1::JOB_STATE_PENDING, "/ckpt/./a/"),
      MakeJob("j-3", v1::JOB_STATE_PENDING, "/ckpt/a"),
  };
  EXPECT_EQ(FolderInUse(jobs, 0), "");  // Jobs after it that wait hold nothing.
  EXPECT_EQ(FolderInUse(jobs, 1),
            "waiting for job j-1 (RUNNING) to end: both use checkpointing.dir /ckpt/a");
  // The first holder in submission order is named.
  EXPECT_EQ(FolderInUse(jobs, 2),
            "waiting for job j-1 (RUNNING) to end: both use checkpointing.dir /ckpt/a");
}

TEST(FolderInUseTest, AnEarlierPendingJobHoldsTheFolderToo) {
  const std::vector<v1::Job> jobs = {
      MakeJob("j-1", v1::JOB_STATE_PENDING, "", "/out/x"),
      MakeJob("j-2", v1::JOB_STATE_PENDING, "", "/out/x/"),
  };
  EXPECT_EQ(FolderInUse(jobs, 0), "");
  EXPECT_EQ(FolderInUse(jobs, 1),
            "waiting for job j-1 (PENDING) to end: both use output_dir /out/x");
}

TEST(FolderInUseTest, ALaterJobThatIsScheduledHoldsTheFolder) {
  // Restarted as PENDING while a later job with its folder was scheduled meanwhile.
  const std::vector<v1::Job> jobs = {
      MakeJob("j-1", v1::JOB_STATE_PENDING, "/ckpt/a"),
      MakeJob("j-2", v1::JOB_STATE_SCHEDULED, "/ckpt/a"),
      MakeJob("j-3", v1::JOB_STATE_CANCELLING, "/ckpt/b"),
      MakeJob("j-4", v1::JOB_STATE_PENDING, "/ckpt/b"),
  };
  EXPECT_EQ(FolderInUse(jobs, 0),
            "waiting for job j-2 (SCHEDULED) to end: both use checkpointing.dir /ckpt/a");
  EXPECT_EQ(FolderInUse(jobs, 3),
            "waiting for job j-3 (CANCELLING) to end: both use checkpointing.dir /ckpt/b");
}

TEST(FolderInUseTest, EndedJobsOtherFieldsAndOtherFoldersHoldNothing) {
  const std::vector<v1::Job> jobs = {
      MakeJob("j-1", v1::JOB_STATE_FAILED, "/ckpt/a"),       // Ended during the pass.
      MakeJob("j-2", v1::JOB_STATE_RUNNING, "", "/ckpt/a"),  // The folder, as another field.
      MakeJob("j-3", v1::JOB_STATE_RUNNING, "/ckpt/ab"),
      MakeJob("j-4", v1::JOB_STATE_PENDING, "/ckpt/a"),
      MakeJob("j-5", v1::JOB_STATE_PENDING, ""),  // Uses no folder.
  };
  EXPECT_EQ(FolderInUse(jobs, 3), "");
  EXPECT_EQ(FolderInUse(jobs, 4), "");
}

}  // namespace
}  // namespace mimo::coordinator
