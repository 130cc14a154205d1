// mimoctl against a real coordinator: submit, get, list, validate, cancel, logs, watch --wait,
// field-violation errors, auth and an unreachable server, as a user runs them.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "google/protobuf/util/json_util.h"
#include "nlohmann/json.hpp"
#include "tests/coordinator/test_server.h"
#include "tests/tools/mimoctl_runner.h"

namespace mimo::coordinator::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

using Result = ::mimo::tools::testing::MimoctlResult;
using ::mimo::tools::testing::RunMimoctl;

std::string Example(const std::string& name) { return mimo::tools::testing::ExampleSpec(name); }

class MimoctlClientTest : public CoordinatorFixture {
 protected:
  void SetUp() override { StartServer(); }
  Result Ctl(const std::string& args) {
    return RunMimoctl(absl::StrCat(args, " --server 127.0.0.1:", server_->port()));
  }
  // The job id in `mimoctl submit -o json` output.
  static std::string IdOf(const Result& r) {
    return nlohmann::json::parse(r.out)["id"].get<std::string>();
  }
};

TEST_F(MimoctlClientTest, SubmitGetListCancel) {
  const Result submitted = Ctl(absl::StrCat("submit ", Example("mimo-cpu-8.yaml"), " -o json"));
  ASSERT_EQ(submitted.exit_code, 0) << submitted.err;
  const std::string id = IdOf(submitted);
  EXPECT_THAT(id, StartsWith("j-"));
  const Result got = Ctl(absl::StrCat("get ", id, " -o json"));
  ASSERT_EQ(got.exit_code, 0) << got.err;
  const auto job = nlohmann::json::parse(got.out);
  EXPECT_EQ(job["state"], "JOB_STATE_PENDING");
  EXPECT_EQ(job["spec"]["name"], "mimo-cpu-8");
  const Result listed = Ctl("list");
  ASSERT_EQ(listed.exit_code, 0) << listed.err;
  EXPECT_THAT(listed.out, HasSubstr(id));
  EXPECT_THAT(listed.out, HasSubstr("mimo-cpu-8"));
  const Result yaml = Ctl(absl::StrCat("get ", id, " -o yaml"));
  ASSERT_EQ(yaml.exit_code, 0) << yaml.err;
  EXPECT_THAT(yaml.out, HasSubstr("state: JOB_STATE_PENDING"));
  const Result cancelled = Ctl(absl::StrCat("cancel ", id, " --reason 'changed my mind'"));
  ASSERT_EQ(cancelled.exit_code, 0) << cancelled.err;
  EXPECT_EQ(Get(id).state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(Get(id).state_reason(), "changed my mind");
  const Result again = Ctl(absl::StrCat("cancel ", id));
  EXPECT_EQ(again.exit_code, 1);
  EXPECT_THAT(again.err, HasSubstr("error: job " + id + " is already CANCELLED"));
}

TEST_F(MimoctlClientTest, InvalidSpecPrintsOneLinePerFieldViolation) {
  const Result r = Ctl(absl::StrCat("submit ", Example("invalid-layout.yaml")));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.out, "");
  EXPECT_THAT(r.err, HasSubstr("error: modules[0].parallelism.ep: module 'vision' is an encoder "
                               "and must be dense: ep=2"));
  EXPECT_THAT(r.err, HasSubstr("error: modules[1].parallelism.rank_offset: modules 'vision' "
                               "[0,2) and 'audio' [1,3) overlap on rank 1"));
}

TEST_F(MimoctlClientTest, ValidatePrintsThePlanTableLikePlan) {
  const Result validated = Ctl(absl::StrCat("validate ", Example("selftest-cpu.yaml")));
  ASSERT_EQ(validated.exit_code, 0) << validated.err;
  const Result planned = RunMimoctl(
      "plan --world 8 --component vision=tp=2,dp=1,rank_offset=0 --component "
      "audio=dp=2,rank_offset=2 --component language=tp=2,dp=2,ep=2,rank_offset=4");
  ASSERT_EQ(planned.exit_code, 0) << planned.err;
  EXPECT_EQ(validated.out, planned.out);
}

TEST_F(MimoctlClientTest, SubmitWaitFollowsTheJobToItsEnd) {
  v1::JobSpec spec = SmallSpec();
  const std::string spec_path = ::testing::TempDir() + "/small.json";
  {
    std::string json;
    ASSERT_TRUE(google::protobuf::util::MessageToJsonString(spec, &json).ok());
    std::ofstream(spec_path) << json;
  }
  auto workers = Workers(4);
  std::thread run([&] {
    std::vector<v1::Assignment> as = Assignments(workers);
    for (int r = 0; r < 4; ++r)
      ASSERT_TRUE(workers[r]->Report(as[r], v1::WORKER_STATE_RUNNING).ok());
    for (int step = 1; step <= 10; step += 3) {
      ASSERT_TRUE(workers[3]->Metrics(as[3], step, 6.0 - step * 0.1).ok());
    }
    ASSERT_TRUE(workers[0]->Logs(as[0], {"hello from rank 0"}).ok());
    for (int r = 0; r < 4; ++r) {
      ASSERT_TRUE(workers[r]->Report(as[r], v1::WORKER_STATE_SUCCEEDED).ok());
    }
  });
  const Result r = Ctl(absl::StrCat("submit ", spec_path, " --wait"));
  run.join();
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("SUCCEEDED"));
  const Result list = Ctl("list -o json");
  ASSERT_EQ(list.exit_code, 0) << list.err;
  const std::string job_id = nlohmann::json::parse(list.out)["jobs"][0]["id"].get<std::string>();
  const Result logs = Ctl(absl::StrCat("logs ", job_id));
  ASSERT_EQ(logs.exit_code, 0) << logs.err;
  EXPECT_EQ(logs.out, "[rank 0] hello from rank 0\n");
  const Result rank_logs = Ctl(absl::StrCat("logs ", job_id, " --rank 0"));
  EXPECT_EQ(rank_logs.out, "hello from rank 0\n");
  const Result events = Ctl(absl::StrCat("events ", job_id));
  ASSERT_EQ(events.exit_code, 0) << events.err;
  EXPECT_THAT(events.out, StartsWith("SEQ  TIME"));
  EXPECT_THAT(events.out, HasSubstr("PENDING"));
  EXPECT_THAT(events.out, HasSubstr("metrics step 10, loss 5.0000"));
  EXPECT_THAT(events.out, HasSubstr("SUCCEEDED"));
  const Result events_json = Ctl(absl::StrCat("events ", job_id, " -o json"));
  ASSERT_EQ(events_json.exit_code, 0) << events_json.err;
  // PENDING SCHEDULED RUNNING, four metrics reports, SUCCEEDED.
  EXPECT_EQ(nlohmann::json::parse(events_json.out)["events"].size(), 8u);
}

TEST_F(MimoctlClientTest, WatchExitsNonZeroWhenTheJobFails) {
  const v1::Job job = Submit(SmallSpec());
  auto workers = Workers(4);
  std::thread fail([&] {
    std::vector<v1::Assignment> as = Assignments(workers);
    absl::SleepFor(absl::Milliseconds(200));
    ASSERT_TRUE(workers[2]->Report(as[2], v1::WORKER_STATE_FAILED, 9, "out of memory").ok());
  });
  const Result r = Ctl(absl::StrCat("watch ", job.id()));
  fail.join();
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.out + r.err, HasSubstr("rank 2 failed (exit code 9): out of memory"));
}

TEST_F(MimoctlClientTest, TokenIsSentWhenGiven) {
  StopServer();
  ServerOptions options = FastOptions(db_path_);
  options.auth_token = "let-me-in";
  StartServer(options);
  const Result denied = Ctl("list");
  EXPECT_EQ(denied.exit_code, 1);
  EXPECT_THAT(denied.err, HasSubstr("Bearer"));
  const Result allowed = Ctl("list --token let-me-in");
  EXPECT_EQ(allowed.exit_code, 0) << allowed.err;
}

TEST(MimoctlUnreachableTest, ExitCodeThree) {
  const Result r = RunMimoctl("list --server 127.0.0.1:1 --timeout 2");
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_THAT(r.err, HasSubstr("cannot reach the coordinator at 127.0.0.1:1"));
}

}  // namespace
}  // namespace mimo::coordinator::testing
