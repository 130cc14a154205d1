// mimoctl against a real coordinator: submit, get, list, validate, cancel, logs, watch --wait,
// field-violation errors, oversized specs, auth, an unreachable server and bad flags, as a user
// runs them.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/util/json_util.h"
#include "mimo/v1/job_service.grpc.pb.h"
#include "nlohmann/json.hpp"
#include "tests/coordinator/test_server.h"
#include "tests/tools/mimoctl_runner.h"

namespace mimo::coordinator::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
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

TEST_F(MimoctlClientTest, TheNextPageHintKeepsTheFilters) {
  for (int i = 0; i < 3; ++i) {
    ASSERT_EQ(Ctl(absl::StrCat("submit ", Example("mimo-cpu-8.yaml"))).exit_code, 0);
  }
  const Result listed = Ctl("list --state Pending --limit 2");
  ASSERT_EQ(listed.exit_code, 0) << listed.err;
  EXPECT_THAT(listed.err,
              HasSubstr("more jobs: mimoctl list --state pending --limit 2 --page-token "));
  const Result all = Ctl("list --limit 2");
  EXPECT_THAT(all.err, HasSubstr("more jobs: mimoctl list --limit 2 --page-token "));
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
  BackgroundHeartbeats beats;  // Live through mimoctl's start (past 400 ms on a loaded machine).
  auto workers = Workers(4, beats);
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

// logs --follow goes on to a restarted job's next attempt, as its help says: the coordinator's
// stream kept the attempt that was the latest when it started (before dff5776), so mimoctl printed
// attempt 1's lines, then nothing while attempt 2 ran, and ended with the job; the help said to
// run logs again (1c8e490).
TEST_F(MimoctlClientTest, LogsFollowGoesOnToTheNextAttempt) {
  const Result help = RunMimoctl("logs --help");
  EXPECT_THAT(help.out, HasSubstr("without --attempt, through restarts"));
  EXPECT_THAT(help.out, Not(HasSubstr("run logs again")));
  v1::JobSpec spec = SmallSpec();
  spec.set_max_restarts(1);
  const v1::Job job = Submit(spec);
  BackgroundHeartbeats beats;
  auto workers = Workers(4, beats);
  std::vector<v1::Assignment> as = Assignments(workers);
  for (int r = 0; r < 4; ++r) ASSERT_TRUE(workers[r]->Report(as[r], v1::WORKER_STATE_RUNNING).ok());
  ASSERT_TRUE(workers[0]->Logs(as[0], {"one"}).ok());
  const std::string err = absl::StrCat(::testing::TempDir(), "/logs-follow-", getpid(), ".err");
  FILE* pipe = popen(absl::StrCat(mimo::tools::testing::MimoctlPath(), " logs ", job.id(),
                                  " -f --rank 0 --server 127.0.0.1:", server_->port(), " 2>", err)
                         .c_str(),
                     "r");
  ASSERT_NE(pipe, nullptr);
  char line[4096];
  // Once it printed attempt 1's line, mimoctl follows attempt 1.
  ASSERT_NE(fgets(line, sizeof(line), pipe), nullptr);
  EXPECT_STREQ(line, "one\n");
  ASSERT_TRUE(workers[1]->Report(as[1], v1::WORKER_STATE_FAILED, 1, "boom").ok());
  AwaitState(job.id(), v1::JOB_STATE_PENDING);
  for (int r : {0, 2, 3}) ASSERT_TRUE(workers[r]->Report(as[r], v1::WORKER_STATE_STOPPED).ok());
  as = Assignments(workers);
  ASSERT_EQ(as[0].attempt(), 2);
  for (int r = 0; r < 4; ++r) ASSERT_TRUE(workers[r]->Report(as[r], v1::WORKER_STATE_RUNNING).ok());
  ASSERT_TRUE(workers[0]->Logs(as[0], {"two"}).ok());
  for (int r = 0; r < 4; ++r) {
    ASSERT_TRUE(workers[r]->Report(as[r], v1::WORKER_STATE_SUCCEEDED).ok());
  }
  std::string rest;
  while (fgets(line, sizeof(line), pipe) != nullptr) rest += line;
  const int status = pclose(pipe);
  EXPECT_EQ(rest, "two\n");
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  // Where attempt 2's lines begin is said on stderr.
  std::stringstream said;
  said << std::ifstream(err).rdbuf();
  EXPECT_EQ(said.str(), absl::StrCat("logs: job ", job.id(), ": attempt 2's lines\n"));
  std::remove(err.c_str());
}

TEST_F(MimoctlClientTest, WatchExitsNonZeroWhenTheJobFails) {
  const v1::Job job = Submit(SmallSpec());
  BackgroundHeartbeats beats;
  auto workers = Workers(4, beats);
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

// A spec the coordinator would not receive is refused before it is sent, naming the limit (gRPC
// said only "Received message larger than max (5000172 vs. 4194304)").
// A coordinator serving TLS: mimoctl talks to it with --tls-ca, and without it says to pass it
// (it said only "cannot reach the coordinator at ...: Socket closed", as if the coordinator were
// down).
TEST_F(MimoctlClientTest, TlsNeedsTlsCaAndSaysSo) {
  StopServer();
  const std::string cert = ::testing::TempDir() + "/mimoctl-tls-cert.pem";
  const std::string key = ::testing::TempDir() + "/mimoctl-tls-key.pem";
  const std::string command = absl::StrCat(
      "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost -addext "
      "subjectAltName=IP:127.0.0.1,DNS:localhost -keyout ",
      key, " -out ", cert, " 2>/dev/null");
  ASSERT_EQ(std::system(command.c_str()), 0) << command;
  ServerOptions options = FastOptions(db_path_);
  options.tls_cert_file = cert;
  options.tls_key_file = key;
  StartServer(options);
  const Result secure = Ctl(absl::StrCat("list --tls-ca ", cert));
  EXPECT_EQ(secure.exit_code, 0) << secure.err;
  const Result plain = Ctl("list --timeout 5");
  EXPECT_EQ(plain.exit_code, 3);
  EXPECT_THAT(plain.err, HasSubstr("\nnote: the coordinator closed the connection; if it serves "
                                   "TLS, pass --tls-ca with its CA certificate\n"));
}

// A TLS client of a plaintext coordinator gets mimoctl's error alone: gRPC's own log line ("E1207
// ... ssl_transport_security.cc:1501] Handshake failed ...") came first, saying the same.
TEST_F(MimoctlClientTest, GrpcLogLinesAreNotPrinted) {
  const std::string cert = ::testing::TempDir() + "/mimoctl-plain-cert.pem";
  const std::string key = ::testing::TempDir() + "/mimoctl-plain-key.pem";
  const std::string command =
      absl::StrCat("openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost -keyout ",
                   key, " -out ", cert, " 2>/dev/null");
  ASSERT_EQ(std::system(command.c_str()), 0) << command;
  const Result r = Ctl(absl::StrCat("list --timeout 5 --tls-ca ", cert));
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_THAT(r.err, StartsWith("error: cannot reach the coordinator at 127.0.0.1:"));
  EXPECT_THAT(r.err, HasSubstr("handshake failed"));  // In mimoctl's error.
}

TEST_F(MimoctlClientTest, OversizedSpecIsRefusedBeforeSending) {
  v1::JobSpec spec = SmallSpec();
  spec.set_name(std::string(5'000'000, 'x'));
  const std::string spec_path = ::testing::TempDir() + "/oversized.json";
  {
    std::string json;
    ASSERT_TRUE(google::protobuf::util::MessageToJsonString(spec, &json).ok());
    std::ofstream(spec_path) << json;
  }
  for (const char* command : {"submit", "validate"}) {
    SCOPED_TRACE(command);
    const Result r = Ctl(absl::StrCat(command, " ", spec_path));
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_THAT(r.err, StartsWith("error: " + spec_path + ": the spec makes a request of 500"));
    EXPECT_THAT(r.err, HasSubstr("bytes; the coordinator accepts at most 4194304 bytes (4 MiB)\n"));
  }
  const Result listed = Ctl("list -o json");
  ASSERT_EQ(listed.exit_code, 0) << listed.err;
  EXPECT_EQ(nlohmann::json::parse(listed.out).value("jobs", nlohmann::json::array()).size(), 0u);
}

// "--flag=" (nothing after '=') is "--flag ''": CLI11 alone refused it ("1 required ... missing")
// or took the next argument for its value.
TEST_F(MimoctlClientTest, AnEmptyValueAfterEqualsIsAnEmptyValue) {
  const Result first =
      Ctl(absl::StrCat("submit --request-id= ", Example("mimo-cpu-8.yaml"), " -o json"));
  ASSERT_EQ(first.exit_code, 0) << first.err;
  const Result second =
      Ctl(absl::StrCat("submit --request-id '' ", Example("mimo-cpu-8.yaml"), " -o json"));
  ASSERT_EQ(second.exit_code, 0) << second.err;
  EXPECT_NE(IdOf(first), IdOf(second));  // No request id: two jobs.
  const Result listed = Ctl("list --page-token= --limit 1");
  ASSERT_EQ(listed.exit_code, 0) << listed.err;
  EXPECT_EQ(listed.out, Ctl("list --page-token '' --limit 1").out);
  EXPECT_THAT(listed.out, HasSubstr(IdOf(second)));  // The first page: newest first.
  const Result cancelled = Ctl(absl::StrCat("cancel --reason= ", IdOf(first)));
  ASSERT_EQ(cancelled.exit_code, 0) << cancelled.err;
  ASSERT_EQ(Ctl(absl::StrCat("cancel --reason '' ", IdOf(second))).exit_code, 0);
  EXPECT_EQ(Get(IdOf(first)).state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(Get(IdOf(first)).state_reason(), Get(IdOf(second)).state_reason());
}

// "-o=json" is "-o json", as in kubectl: CLI11 read a short option's value as "=json" and
// refused it ("--output: =json not in {table,json,yaml}", exit 2).
TEST_F(MimoctlClientTest, ShortOutputFlagTakesAnEquals) {
  const Result submitted = Ctl(absl::StrCat("submit ", Example("mimo-cpu-8.yaml"), " -o json"));
  ASSERT_EQ(submitted.exit_code, 0) << submitted.err;
  const std::string id = IdOf(submitted);
  const Result json = Ctl(absl::StrCat("get ", id, " -o=json"));
  ASSERT_EQ(json.exit_code, 0) << json.err;
  EXPECT_EQ(IdOf(json), id);
  const Result yaml = Ctl(absl::StrCat("get ", id, " -o=yaml"));
  ASSERT_EQ(yaml.exit_code, 0) << yaml.err;
  EXPECT_THAT(yaml.out, StartsWith(absl::StrCat("id: ", id, "\n")));
  const Result table = Ctl(absl::StrCat("get ", id, " -o=table"));
  ASSERT_EQ(table.exit_code, 0) << table.err;
  EXPECT_THAT(table.out, StartsWith("ID "));
  const Result bad = Ctl("list -o=xml");
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_THAT(bad.err, StartsWith("--output: xml not in {table,json,yaml}"));
}

TEST(MimoctlUnreachableTest, ExitCodeThree) {
  const Result r = RunMimoctl("list --server 127.0.0.1:1 --timeout 2");
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_THAT(r.err, HasSubstr("cannot reach the coordinator at 127.0.0.1:1"));
}

// The help's example job id has the coordinator's form, j-YYYYMMDD-NNNNNN (it showed four digits).
TEST_F(MimoctlClientTest, HelpShowsAJobIdOfTheRealForm) {
  const Result submitted = Ctl(absl::StrCat("submit ", Example("mimo-cpu-8.yaml"), " -o json"));
  ASSERT_EQ(submitted.exit_code, 0) << submitted.err;
  const std::string id = IdOf(submitted);
  ASSERT_EQ(id.size(), std::string("j-20261123-000001").size()) << id;
  for (const char* command : {"get", "cancel", "checkpoint", "events", "watch", "logs"}) {
    SCOPED_TRACE(command);
    EXPECT_THAT(RunMimoctl(absl::StrCat(command, " --help")).out,
                HasSubstr("Job id, e.g. j-20261123-000001\n"));
  }
}

// docs/api.md's list of JobService's calls (those mimoctl makes) names every one of them: it left
// out CheckpointJob (mimoctl checkpoint).
TEST(MimoctlDocsTest, ApiDocNamesEveryJobServiceCall) {
  const std::filesystem::path docs =
      std::filesystem::path(Example("mimo-cpu-8.yaml")).parent_path().parent_path() / "docs" /
      "api.md";
  std::stringstream text;
  text << std::ifstream(docs).rdbuf();
  const std::string all = text.str();
  const size_t start = all.find("`mimo.v1.JobService`, for users");
  ASSERT_NE(start, std::string::npos) << docs;
  const std::string list = all.substr(start, all.find(';', start) - start);
  const google::protobuf::ServiceDescriptor* service =
      google::protobuf::DescriptorPool::generated_pool()->FindServiceByName(
          v1::JobService::service_full_name());
  ASSERT_NE(service, nullptr);
  for (int i = 0; i < service->method_count(); ++i) {
    EXPECT_THAT(list, HasSubstr(absl::StrCat("`", service->method(i)->name(), "`")));
  }
}

// An empty job id is a usage error: the coordinator answered "error: invalid job spec (1 problem)",
// then "error: job_id: is required", exit 1.
TEST(MimoctlFlagsTest, AnEmptyJobIdIsAUsageError) {
  for (const char* command :
       {"get ''", "cancel ''", "checkpoint ''", "events ''", "watch ''", "logs ''"}) {
    SCOPED_TRACE(command);
    const Result r = RunMimoctl(absl::StrCat(command, " --server 127.0.0.1:1 --timeout 2"));
    EXPECT_EQ(r.exit_code, 2);
    EXPECT_THAT(r.err, StartsWith("JOB_ID: the job id is empty\n"));
  }
}

// A --tls-ca file without a certificate (a key given by mistake) is refused: gRPC printed its own
// log lines and mimoctl "cannot reach the coordinator ...: empty address list", exit 3.
TEST(MimoctlFlagsTest, TlsCaMustHoldACertificate) {
  const std::string path = ::testing::TempDir() + "/mimoctl-not-a-ca.pem";
  std::ofstream(path) << "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n";
  const Result r =
      RunMimoctl(absl::StrCat("list --server 127.0.0.1:1 --timeout 2 --tls-ca ", path));
  std::filesystem::remove(path);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, absl::StrCat("error: --tls-ca ", path,
                                " holds no PEM certificate (no '-----BEGIN CERTIFICATE-----' "
                                "line)\n"));
}

// --server (or $MIMO_SERVER) is checked before a channel is made: an empty one printed gRPC's
// own log lines, and port 99999 wrapped to 34463.
TEST(MimoctlFlagsTest, ServerMustBeHostColonPort) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"''", "--server: the coordinator address is empty; give HOST:PORT, e.g. localhost:50051"},
      {"localhost:99999",
       "--server: 'localhost:99999': the port must be a number in 1-65535, "
       "got '99999'"},
      {"localhost:0", "the port must be a number in 1-65535, got '0'"},
      {"localhost", "--server: 'localhost' has no port; give HOST:PORT"},
      {":50051", "--server: ':50051' has no host"},
      {"'a b:1'", "--server: 'a b:1': 'a b' is not a host name or IP address"},
      {"::1:50051", "an IPv6 address goes in brackets, e.g. [::1]:50051"},
  };
  for (const auto& [server, message] : cases) {
    SCOPED_TRACE(server);
    const Result r = RunMimoctl(absl::StrCat("list --server ", server));
    EXPECT_EQ(r.exit_code, 2);
    EXPECT_THAT(r.err, StartsWith("--server: "));
    EXPECT_THAT(r.err, HasSubstr(message));
  }
  // "--server=" is "--server ''".
  const Result empty = RunMimoctl("list --server=");
  EXPECT_EQ(empty.exit_code, 2);
  EXPECT_THAT(empty.err, StartsWith("--server: the coordinator address is empty"));
  setenv("MIMO_SERVER", "x:70000", /*overwrite=*/1);
  const Result env = RunMimoctl("list");
  unsetenv("MIMO_SERVER");
  EXPECT_EQ(env.exit_code, 2);
  EXPECT_THAT(env.err, HasSubstr("--server: 'x:70000': the port must be a number in 1-65535"));
  // A bracketed IPv6 address is taken.
  const Result v6 = RunMimoctl("list --server '[::1]:1' --timeout 2");
  EXPECT_EQ(v6.exit_code, 3) << v6.err;
}

// Numeric flags out of range name the flag and the range (CLI11's PositiveNumber printed
// "not in range 0.000000 to 1797...", let nan and 1e300 seconds through, and values beyond 32 bits
// read "Could not convert").
TEST(MimoctlFlagsTest, NumericFlagsNameTheirRange) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"list --timeout 0", "--timeout: must be a number of seconds in [0.001, 86400], got '0'"},
      {"list --timeout nan", "--timeout: must be a number of seconds in [0.001, 86400], got 'nan'"},
      {"list --timeout 1e300", "--timeout: must be a number of seconds in [0.001, 86400]"},
      {"list --limit 0", "--limit: must be an integer in [1, 2147483647], got '0'"},
      {"list --limit 99999999999", "--limit: must be an integer in [1, 2147483647]"},
      {"logs j-1 --rank -1", "--rank: must be an integer in [0, 16777215], got '-1'"},
      {"logs j-1 --tail 3000000000", "--tail: must be an integer in [0, 2147483647]"},
      {"logs j-1 --attempt -2", "--attempt: must be an integer in [0, 2147483647]"},
      {"plan --world 99999999999 --component language=dp=1",
       "--world: must be an integer in [1, 16777216]"},
      {"plan --world 1 --component language=dp=1 --seed 99999999999999999999",
       "--seed: must be an integer in [0, 4611686018427387904]"},
  };
  for (const auto& [args, message] : cases) {
    SCOPED_TRACE(args);
    // Job commands are given a server that refuses at once, should the flag get through.
    const Result r =
        RunMimoctl(args.starts_with("plan") ? args : absl::StrCat(args, " --server 127.0.0.1:1"));
    EXPECT_EQ(r.exit_code, 2);
    EXPECT_THAT(r.err, StartsWith(message));
  }
}

// Every numeric flag given an empty value ("--flag ''" or "--flag=") is a usage error naming it:
// CLI11 alone read an empty number as 0.
TEST(MimoctlFlagsTest, AnEmptyNumberIsAUsageError) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"list --timeout", "--timeout: must be a number of seconds in [0.001, 86400], got ''"},
      {"list --limit", "--limit: must be an integer in [1, 2147483647], got ''"},
      {"logs j-1 --rank", "--rank: must be an integer in [0, 16777215], got ''"},
      {"logs j-1 --tail", "--tail: must be an integer in [0, 2147483647], got ''"},
      {"logs j-1 --attempt", "--attempt: must be an integer in [0, 2147483647], got ''"},
      {"plan --component language=dp=1 --world",
       "--world: the value is empty; give an integer, or leave the flag out for its default"},
      {"plan --world 1 --component language=dp=1 --seed",
       "--seed: the value is empty; give an integer, or leave the flag out for its default"},
  };
  for (const auto& [args, message] : cases) {
    for (const char* empty : {" ''", "="}) {
      SCOPED_TRACE(absl::StrCat(args, empty));
      const std::string line = absl::StrCat(args, empty);
      const Result r =
          RunMimoctl(line.starts_with("plan") ? line : absl::StrCat(line, " --server 127.0.0.1:1"));
      EXPECT_EQ(r.exit_code, 2);
      EXPECT_THAT(r.err, StartsWith(message));
    }
  }
}

}  // namespace
}  // namespace mimo::coordinator::testing
