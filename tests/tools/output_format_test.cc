// mimoctl's output formats: job tables, the progress line, errors, the rank plan, JSON and YAML.
#include "tools/mimoctl/output_format.h"

#include <gmock/gmock.h>
#include <google/protobuf/util/json_util.h>
#include <google/protobuf/util/message_differencer.h>
#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/time/time.h"
#include "coordinator/plan_proto.h"
#include "coordinator/spec_validation.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "mimo/v1/worker_service.pb.h"
#include "nlohmann/json.hpp"
#include "parallel/plan_format.h"
#include "parallel/rank_plan.h"

namespace mimo::tools {
namespace {

using ::google::protobuf::util::MessageDifferencer;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;

const absl::Time kNow = absl::FromUnixSeconds(1'800'000'000);

google::protobuf::Timestamp ToProto(absl::Time t) {
  google::protobuf::Timestamp out;
  out.set_seconds(absl::ToUnixSeconds(t));
  return out;
}

v1::Job RunningJob() {
  v1::Job job;
  job.set_id("j-20261123-0001");
  job.mutable_spec()->set_name("moe-8x");
  job.set_state(v1::JOB_STATE_RUNNING);
  *job.mutable_create_time() = ToProto(kNow - absl::Hours(3) - absl::Minutes(4) - absl::Seconds(9));
  job.mutable_progress()->set_step(1200);
  job.mutable_progress()->set_total_steps(5000);
  job.mutable_progress()->set_percent(24.0);
  job.mutable_progress()->mutable_eta()->set_seconds(3725);
  job.mutable_last_metrics()->set_step(1200);
  job.mutable_last_metrics()->set_loss(2.31412);
  job.mutable_last_metrics()->set_tokens_per_second(52000.4);
  return job;
}

TEST(JobStateNameTest, DropsThePrefixAndShowsUnknownValuesAsNumbers) {
  EXPECT_EQ(JobStateName(v1::JOB_STATE_CANCELLING), "CANCELLING");
  EXPECT_EQ(JobStateName(static_cast<v1::JobState>(42)), "42");
  EXPECT_TRUE(IsFinished(v1::JOB_STATE_CANCELLED));
  EXPECT_FALSE(IsFinished(v1::JOB_STATE_CANCELLING));
}

TEST(FormatShortDurationTest, TwoUnitsAtMost) {
  EXPECT_EQ(FormatShortDuration(absl::Seconds(-5)), "0s");
  EXPECT_EQ(FormatShortDuration(absl::Milliseconds(1900)), "1s");
  EXPECT_EQ(FormatShortDuration(absl::Seconds(59)), "59s");
  EXPECT_EQ(FormatShortDuration(absl::Seconds(60)), "1m0s");
  EXPECT_EQ(FormatShortDuration(absl::Seconds(3599)), "59m59s");
  EXPECT_EQ(FormatShortDuration(absl::Hours(1)), "1h0m");
  EXPECT_EQ(FormatShortDuration(absl::Seconds(86399)), "23h59m");
  EXPECT_EQ(FormatShortDuration(absl::Hours(53) + absl::Minutes(59)), "2d5h");
}

TEST(FormatJobTableTest, AlignsColumnsAndMarksUnknownValues) {
  google::protobuf::RepeatedPtrField<v1::Job> jobs;
  *jobs.Add() = RunningJob();
  v1::Job* pending = jobs.Add();
  pending->set_id("j-20261123-0002");
  pending->mutable_spec()->set_name("tiny");
  pending->set_state(v1::JOB_STATE_PENDING);
  v1::Job* started = jobs.Add();
  started->set_id("j-3");
  started->mutable_spec()->set_name("no-total");
  started->set_state(v1::JOB_STATE_SCHEDULED);
  started->mutable_progress()->set_step(7);
  *started->mutable_create_time() = ToProto(kNow - absl::Seconds(42));
  EXPECT_EQ(FormatJobTable(jobs, kNow),
            "ID               NAME      STATE      STEP       LOSS    AGE\n"
            "j-20261123-0001  moe-8x    RUNNING    1200/5000  2.3141  3h4m\n"
            "j-20261123-0002  tiny      PENDING    -          -       -\n"
            "j-3              no-total  SCHEDULED  7          -       42s\n");
}

TEST(FormatJobTableTest, EmptyListIsTheHeader) {
  EXPECT_EQ(FormatJobTable({}, kNow), "ID  NAME  STATE  STEP  LOSS  AGE\n");
}

TEST(FormatJobTest, AddsTheReasonAndTheFailure) {
  v1::Job job = RunningJob();
  EXPECT_EQ(FormatJob(job, kNow),
            "ID               NAME    STATE    STEP       LOSS    AGE\n"
            "j-20261123-0001  moe-8x  RUNNING  1200/5000  2.3141  3h4m\n");
  job.set_state(v1::JOB_STATE_FAILED);
  job.set_state_reason("rank 3 failed");
  job.mutable_failure()->set_reason("WORKER_FAILED");
  job.mutable_failure()->set_rank(3);
  job.mutable_failure()->set_exit_code(134);
  job.mutable_failure()->set_message("CUDA error: out of memory");
  EXPECT_EQ(FormatJob(job, kNow),
            "ID               NAME    STATE   STEP       LOSS    AGE\n"
            "j-20261123-0001  moe-8x  FAILED  1200/5000  2.3141  3h4m\n"
            "reason: rank 3 failed\n"
            "failure: WORKER_FAILED on rank 3 (exit code 134): CUDA error: out of memory\n");
}

TEST(FormatFailureTest, LeavesOutWhatIsNotKnown) {
  v1::Failure failure;
  failure.set_reason("DEADLINE_EXCEEDED");
  failure.set_rank(-1);
  EXPECT_EQ(FormatFailure(failure), "DEADLINE_EXCEEDED");
  failure.set_rank(0);
  failure.set_message("ran for 2h");
  EXPECT_EQ(FormatFailure(failure), "DEADLINE_EXCEEDED on rank 0: ran for 2h");
}

TEST(FormatProgressLineTest, EveryPart) {
  EXPECT_EQ(FormatProgressLine(RunningJob()),
            "RUNNING  step 1200/5000 (24.0%)  loss 2.3141  52000 tok/s  ETA 1h2m");
}

TEST(FormatProgressLineTest, WithoutEtaOrThroughput) {
  v1::Job job = RunningJob();
  job.mutable_progress()->clear_eta();
  job.mutable_last_metrics()->set_tokens_per_second(0);
  job.mutable_progress()->set_step(1);
  job.mutable_progress()->set_percent(0.02);
  EXPECT_EQ(FormatProgressLine(job), "RUNNING  step 1/5000 (0.0%)  loss 2.3141");
}

TEST(FormatProgressLineTest, WithoutMetrics) {
  v1::Job job;
  job.set_state(v1::JOB_STATE_PENDING);
  EXPECT_EQ(FormatProgressLine(job), "PENDING");
  job.set_state(v1::JOB_STATE_SCHEDULED);
  job.mutable_progress()->set_step(7);
  EXPECT_EQ(FormatProgressLine(job), "SCHEDULED  step 7");
  job.mutable_progress()->set_total_steps(10);
  job.mutable_progress()->set_percent(70);
  job.mutable_progress()->mutable_eta()->set_seconds(61);
  EXPECT_EQ(FormatProgressLine(job), "SCHEDULED  step 7/10 (70.0%)  ETA 1m1s");
  // A job stopping or ended keeps its last estimate in the record, but will not finish by it.
  for (v1::JobState state : {v1::JOB_STATE_CANCELLING, v1::JOB_STATE_CANCELLED,
                             v1::JOB_STATE_FAILED, v1::JOB_STATE_SUCCEEDED}) {
    job.set_state(state);
    EXPECT_EQ(FormatProgressLine(job), JobStateName(state) + "  step 7/10 (70.0%)");
  }
}

TEST(FormatJobEndTest, SaysHowTheJobEnded) {
  v1::Job job;
  job.set_id("j-1");
  job.set_state(v1::JOB_STATE_SUCCEEDED);
  job.set_state_reason("every rank exited 0");
  EXPECT_EQ(FormatJobEnd(job), "job j-1 SUCCEEDED");
  job.set_state(v1::JOB_STATE_CANCELLED);
  job.set_state_reason("superseded by j-2");
  EXPECT_EQ(FormatJobEnd(job), "job j-1 CANCELLED: superseded by j-2");
  job.clear_state_reason();
  EXPECT_EQ(FormatJobEnd(job), "job j-1 CANCELLED");
  job.set_state(v1::JOB_STATE_FAILED);
  job.set_state_reason("workers lost");
  EXPECT_EQ(FormatJobEnd(job), "job j-1 FAILED: workers lost");
  job.mutable_failure()->set_reason("HEARTBEAT_TIMEOUT");
  job.mutable_failure()->set_rank(5);
  EXPECT_EQ(FormatJobEnd(job), "job j-1 FAILED: HEARTBEAT_TIMEOUT on rank 5");
}

TEST(FormatLogLineTest, PrefixesTheRank) {
  v1::LogLine line;
  line.set_rank(12);
  line.set_text("step 10 loss 3.2");
  EXPECT_EQ(FormatLogLine(line, /*with_rank=*/true), "[rank 12] step 10 loss 3.2");
  EXPECT_EQ(FormatLogLine(line, /*with_rank=*/false), "step 10 loss 3.2");
}

// A google.rpc.Status as the coordinator sends it for an invalid spec.
grpc::Status InvalidSpec(const std::string& message) {
  google::rpc::DebugInfo debug;
  debug.set_detail("not a BadRequest: skipped");
  google::rpc::BadRequest bad_request;
  auto* v = bad_request.add_field_violations();
  v->set_field("modules[1].parallelism.ep");
  v->set_description("must be 1 on an encoder");
  v = bad_request.add_field_violations();
  v->set_field("training.steps");
  v->set_description("must be positive");
  google::rpc::Status status;
  status.set_code(3);
  status.set_message(message);
  status.add_details()->PackFrom(debug);
  status.add_details()->PackFrom(bad_request);
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, message, status.SerializeAsString());
}

TEST(FormatRpcErrorTest, OneLinePerFieldViolation) {
  EXPECT_THAT(FormatRpcError(InvalidSpec("invalid job spec (2 problems)")),
              ElementsAre("error: invalid job spec (2 problems)",
                          "error: modules[1].parallelism.ep: must be 1 on an encoder",
                          "error: training.steps: must be positive"));
}

TEST(FormatRpcErrorTest, ViolationsTheMessageStatesAreNotRepeated) {
  EXPECT_THAT(
      FormatRpcError(InvalidSpec("invalid job spec (2 problems)\n"
                                 "training.steps: must be positive")),
      ElementsAre("error: invalid job spec (2 problems)", "error: training.steps: must be positive",
                  "error: modules[1].parallelism.ep: must be 1 on an encoder"));
}

// A violation the message states after a prefix of its own ("invalid request: FIELD: ...", the
// coordinator's bad request fields) is not printed again.
TEST(FormatRpcErrorTest, AViolationTheMessageEndsWithIsNotRepeated) {
  EXPECT_THAT(FormatRpcError(InvalidSpec("invalid request: training.steps: must be positive")),
              ElementsAre("error: invalid request: training.steps: must be positive",
                          "error: modules[1].parallelism.ep: must be 1 on an encoder"));
}

TEST(FormatRpcErrorTest, WithoutDetails) {
  EXPECT_THAT(FormatRpcError(grpc::Status(grpc::StatusCode::NOT_FOUND, "no job j-9")),
              ElementsAre("error: no job j-9"));
  EXPECT_THAT(FormatRpcError(grpc::Status(grpc::StatusCode::NOT_FOUND, "")),
              ElementsAre("error: NOT_FOUND"));
  EXPECT_THAT(FormatRpcError(grpc::Status(grpc::StatusCode::INTERNAL, "a\nb", "\xff\xff")),
              ElementsAre("error: a", "error: b"));
}

// The planner's plan as the coordinator sends it (groups are not in the table).
v1::RankPlan ToProto(const parallel::RankPlan& plan) {
  return coordinator::RankPlanToProto(plan, coordinator::GroupMembers::kOmit);
}

TEST(FormatRankPlanTableTest, SameAsThePlannersTable) {
  parallel::LayoutSpec spec;
  spec.world_size = 12;
  spec.seed = 77;
  spec.data_parallel_random_init = true;
  spec.modules = {{.name = "vision", .tp = 2, .dp = 1, .rank_offset = 0},
                  {.name = "audio", .dp = 2, .rank_offset = 2},
                  {.name = "language", .tp = 2, .pp = 2, .dp = 2, .ep = 2, .rank_offset = 4}};
  absl::StatusOr<parallel::RankPlan> plan = parallel::BuildRankPlan(spec);
  ASSERT_TRUE(plan.ok()) << plan.status();
  std::ostringstream expected;
  parallel::WritePlanTable(*plan, expected);
  const std::string table = FormatRankPlanTable(ToProto(*plan));
  EXPECT_EQ(table, expected.str());
  EXPECT_THAT(table, HasSubstr("\nlanguage  [4,12)  2   1   2   2   2   1    2        1\n"));
}

// A job that exercises every JSON type and the strings YAML would misread unquoted.
v1::Job TrickyJob() {
  v1::Job job = RunningJob();
  job.set_request_id("0123");
  job.set_state_reason("  padded: with \"quotes\"\nand a second line  ");
  job.set_attempt(2);
  job.mutable_spec()->set_name("true");
  job.mutable_spec()->set_kind(v1::JobSpec::KIND_TRAIN);
  v1::Module* vision = job.mutable_spec()->add_modules();
  vision->set_name("vision");
  vision->mutable_vision()->set_image_size(224);
  vision->mutable_parallelism()->set_tp(2);
  vision->mutable_parallelism()->set_dp(0);  // Set, though zero: optional fields keep it.
  job.mutable_spec()->mutable_data()->mutable_webdataset()->add_shards("/data/s-{000..009}.tar");
  job.mutable_spec()->mutable_data()->mutable_webdataset()->add_shards("-");
  for (const char* shard : {"", "-1", "+1", ".5", "N", "Off", "null"}) {
    job.mutable_spec()->mutable_data()->mutable_webdataset()->add_shards(shard);
  }
  job.mutable_spec()->mutable_training()->mutable_optimizer()->set_lr(3e-4);
  job.mutable_spec()->mutable_training()->mutable_optimizer()->set_adam_eps(1e-300);
  job.mutable_spec()->mutable_training()->set_packing(true);
  job.mutable_spec()->mutable_training()->set_seed(int64_t{1} << 62);
  (*job.mutable_last_metrics()->mutable_values())["grad_norm"] = -0.5;
  (*job.mutable_last_metrics()->mutable_values())["yes"] = 1;
  job.mutable_failure()->set_reason("null");
  job.mutable_failure()->set_rank(-1);
  job.mutable_failure()->set_message("~");
  *job.mutable_end_time() = ToProto(kNow);
  return job;
}

// Reads YAML as a typing reader does: quoted scalars are strings; plain ones are booleans when
// yaml-cpp reads them as such (YAML 1.1's y/n/yes/no/on/off too), else integers or floats when
// they spell one.
nlohmann::json YamlToJson(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Map: {
      nlohmann::json out = nlohmann::json::object();
      for (const auto& item : node) out[item.first.Scalar()] = YamlToJson(item.second);
      return out;
    }
    case YAML::NodeType::Sequence: {
      nlohmann::json out = nlohmann::json::array();
      for (const auto& item : node) out.push_back(YamlToJson(item));
      return out;
    }
    case YAML::NodeType::Scalar: {
      const std::string& s = node.Scalar();
      if (node.Tag() == "!") return s;
      bool b;
      if (YAML::convert<bool>::decode(node, b)) return b;
      int64_t i;
      if (absl::SimpleAtoi(s, &i)) return i;
      double d;
      if (absl::SimpleAtod(s, &d)) return d;
      return s;
    }
    default:
      ADD_FAILURE() << "unexpected YAML node type " << static_cast<int>(node.Type());
      return nullptr;
  }
}

TEST(ToJsonTest, RoundTripsAJobWithProtoFieldNames) {
  const v1::Job job = TrickyJob();
  for (JsonStyle style : {JsonStyle::kIndented, JsonStyle::kOneLine}) {
    absl::StatusOr<std::string> json = ToJson(job, style);
    ASSERT_TRUE(json.ok()) << json.status();
    EXPECT_THAT(*json, HasSubstr("\"total_steps\""));
    EXPECT_THAT(*json, Not(HasSubstr("totalSteps")));
    EXPECT_EQ(json->back(), '\n');
    EXPECT_EQ(std::count(json->begin(), json->end(), '\n') == 1, style == JsonStyle::kOneLine);
    v1::Job parsed;
    ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(*json, &parsed).ok()) << *json;
    EXPECT_TRUE(MessageDifferencer::Equals(parsed, job)) << parsed.DebugString();
  }
}

TEST(ToJsonTest, ExactOneLineForm) {
  absl::StatusOr<std::string> json = ToJson(RunningJob().progress(), JsonStyle::kOneLine);
  ASSERT_TRUE(json.ok()) << json.status();
  EXPECT_EQ(*json,
            "{\"step\":\"1200\",\"total_steps\":\"5000\",\"percent\":24,\"eta\":\"3725s\"}\n");
}

TEST(ToYamlTest, ExactBlockForm) {
  v1::Failure failure;
  failure.set_reason("WORKER_FAILED");
  failure.set_message("yes: no");
  failure.set_exit_code(1);
  failure.set_rank(3);
  absl::StatusOr<std::string> yaml = ToYaml(failure);
  ASSERT_TRUE(yaml.ok()) << yaml.status();
  EXPECT_EQ(*yaml, "reason: WORKER_FAILED\nmessage: \"yes: no\"\nexit_code: 1\nrank: 3\n");
  yaml = ToYaml(RunningJob().progress());
  ASSERT_TRUE(yaml.ok()) << yaml.status();
  EXPECT_EQ(*yaml, "step: \"1200\"\ntotal_steps: \"5000\"\npercent: 24\neta: \"3725s\"\n");
  yaml = ToYaml(v1::ReportStatusResponse());
  ASSERT_TRUE(yaml.ok()) << yaml.status();
  EXPECT_EQ(*yaml, "{}\n");
  yaml = ToYaml(v1::StreamLogsResponse());
  ASSERT_TRUE(yaml.ok()) << yaml.status();
  EXPECT_EQ(*yaml, "lines: []\n");
}

// A float in exponent form has a '.': YAML 1.1 readers (PyYAML) read "1e-08" as a string, as
// `mimoctl get -o yaml` printed a job's adam_eps.
TEST(ToYamlTest, FloatsReadAsFloatsInYaml11) {
  v1::Optimizer optimizer;
  optimizer.set_adam_eps(1e-8);
  optimizer.set_lr(3e-4);
  optimizer.set_weight_decay(1e20);
  absl::StatusOr<std::string> yaml = ToYaml(optimizer);
  ASSERT_TRUE(yaml.ok()) << yaml.status();
  EXPECT_THAT(*yaml, HasSubstr("\nadam_eps: 1.0e-08\n"));
  EXPECT_THAT(*yaml, HasSubstr("\nweight_decay: 1.0e+20\n"));
  EXPECT_THAT(*yaml, HasSubstr("lr: 0.0003\n"));
  EXPECT_EQ(YamlToJson(YAML::Load(*yaml))["adam_eps"], 1e-8);
}

TEST(ToJsonTest, PrintsDefaultValuesButNotUnsetOptionalFields) {
  v1::LogLine line;
  line.set_text("a: b");
  absl::StatusOr<std::string> json = ToJson(line, JsonStyle::kOneLine);
  ASSERT_TRUE(json.ok()) << json.status();
  EXPECT_EQ(*json, "{\"rank\":0,\"attempt\":0,\"text\":\"a: b\",\"sequence\":\"0\"}\n");
  absl::StatusOr<std::string> yaml = ToYaml(line);
  ASSERT_TRUE(yaml.ok()) << yaml.status();
  EXPECT_EQ(*yaml, "rank: 0\nattempt: 0\ntext: \"a: b\"\nsequence: \"0\"\n");
  v1::Parallelism parallelism;
  parallelism.set_dp(0);
  json = ToJson(parallelism, JsonStyle::kOneLine);
  ASSERT_TRUE(json.ok()) << json.status();
  // rank_offset is unset, so left out; dp is set to 0, so present.
  EXPECT_EQ(nlohmann::json::parse(*json),
            nlohmann::json(
                {{"tp", 0}, {"cp", 0}, {"pp", 0}, {"dp", 0}, {"ep", 0}, {"etp", 0}, {"vpp", 0}}));
}

TEST(ToYamlTest, ReadsBackAsTheJsonDocument) {
  const v1::Job job = TrickyJob();
  absl::StatusOr<std::string> json = ToJson(job, JsonStyle::kOneLine);
  absl::StatusOr<std::string> yaml = ToYaml(job);
  ASSERT_TRUE(json.ok()) << json.status();
  ASSERT_TRUE(yaml.ok()) << yaml.status();
  const nlohmann::json from_yaml = YamlToJson(YAML::Load(*yaml));
  EXPECT_EQ(from_yaml, nlohmann::json::parse(*json)) << *yaml;
  v1::Job parsed;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(from_yaml.dump(), &parsed).ok()) << *yaml;
  EXPECT_TRUE(MessageDifferencer::Equals(parsed, job)) << *yaml;
}

TEST(FormatUuidV4Test, SetsVersionAndVariant) {
  std::array<uint8_t, 16> bytes;
  for (int i = 0; i < 16; ++i) bytes[i] = static_cast<uint8_t>(i);
  EXPECT_EQ(FormatUuidV4(bytes), "00010203-0405-4607-8809-0a0b0c0d0e0f");
  bytes.fill(0xff);
  EXPECT_EQ(FormatUuidV4(bytes), "ffffffff-ffff-4fff-bfff-ffffffffffff");
  bytes.fill(0);
  EXPECT_EQ(FormatUuidV4(bytes), "00000000-0000-4000-8000-000000000000");
}

}  // namespace
}  // namespace mimo::tools
