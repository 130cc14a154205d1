// The API edge of the real server: validation errors with field paths, idempotent and concurrent
// submits, paging, auth, health, reflection and the Prometheus endpoint.
#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <grpcpp/generic/generic_stub.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <future>
#include <set>
#include <sstream>
#include <thread>
#include <tuple>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "coordinator/message_limits.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "tests/coordinator/test_server.h"

namespace mimo::coordinator::testing {
namespace {

using ::testing::Contains;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Pair;
using ::testing::UnorderedElementsAre;

class ApiTest : public CoordinatorFixture {};

TEST_F(ApiTest, InvalidSpecsAreRejectedWithFieldPaths) {
  StartServer();
  v1::JobSpec spec = SmallSpec("Bad_Name");
  spec.mutable_modules(0)->mutable_parallelism()->set_ep(2);           // Encoders are dense.
  spec.mutable_modules(1)->mutable_parallelism()->set_rank_offset(1);  // Overlaps vision.
  spec.mutable_training()->set_global_batch_size(7);
  v1::SubmitJobRequest request;
  *request.mutable_spec() = spec;
  v1::SubmitJobResponse response;
  const grpc::Status status = jobs_->SubmitJob(Context().get(), request, &response);
  ASSERT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  const auto violations = FieldViolations(status);
  std::set<std::string> fields;
  for (const auto& [field, description] : violations) fields.insert(field);
  EXPECT_THAT(fields, Contains("name"));
  EXPECT_THAT(fields, Contains("modules[0].parallelism.ep"));
  EXPECT_THAT(fields, Contains("modules[1].parallelism.rank_offset"));
  EXPECT_THAT(fields, Contains("training.global_batch_size"));
  EXPECT_THAT(
      violations,
      Contains(Pair("modules[1].parallelism.rank_offset",
                    HasSubstr("modules 'vision' [0,2) and 'language' [1,3) overlap on rank 1"))));
  // Nothing was stored.
  v1::ListJobsRequest list;
  v1::ListJobsResponse jobs;
  ASSERT_TRUE(jobs_->ListJobs(Context().get(), list, &jobs).ok());
  EXPECT_EQ(jobs.jobs_size(), 0);

  // ValidateJob reports the same, and a valid spec's plan.
  v1::ValidateJobRequest validate;
  *validate.mutable_spec() = spec;
  v1::ValidateJobResponse plan;
  const grpc::Status invalid = jobs_->ValidateJob(Context().get(), validate, &plan);
  EXPECT_EQ(FieldViolations(invalid), violations);
  *validate.mutable_spec() = SmallSpec();
  ASSERT_TRUE(jobs_->ValidateJob(Context().get(), validate, &plan).ok());
  EXPECT_EQ(plan.plan().world_size(), 4);
  EXPECT_EQ(plan.plan().ranks(3).expert().ep(), 1);
  // Group members grow with the square of the world: a whole plan leaves them out.
  EXPECT_EQ(plan.plan().ranks(3).groups_size(), 0);
  ASSERT_TRUE(jobs_->ListJobs(Context().get(), list, &jobs).ok());
  EXPECT_EQ(jobs.jobs_size(), 0);
}

// ListJobs pages stay readable by a client with gRPC's default 4 MiB receive limit: a page ends
// before the job that would take it past kMaxListPageBytes (three jobs with 1.5 MB cancel reasons
// made one 4.5 MB page, which such a client refused as larger than max).
TEST_F(ApiTest, ListJobsPagesStayWithinTheDefaultReceiveLimit) {
  StartServer();
  std::vector<std::string> newest_first;
  for (int i = 0; i < 3; ++i) {
    // A spec of 1.5 MB: 400 shard paths of 3.7 KB each.
    v1::JobSpec spec = SmallSpec(absl::StrCat("big-", i));
    for (int j = 0; j < 400; ++j) {
      spec.mutable_data()->mutable_webdataset()->add_shards(
          absl::StrCat("/", std::string(3700, 'a'), "/", j, ".tar"));
    }
    const v1::Job job = Submit(spec);
    ASSERT_FALSE(job.id().empty());
    newest_first.insert(newest_first.begin(), job.id());
  }
  v1::ListJobsRequest request;
  request.set_page_size(1000);
  std::vector<std::string> seen;
  std::vector<int> page_sizes;
  do {
    v1::ListJobsResponse page;
    const grpc::Status status = jobs_->ListJobs(Context().get(), request, &page);
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_LE(page.ByteSizeLong(), static_cast<size_t>(kMaxRequestBytes));  // gRPC's default.
    page_sizes.push_back(page.jobs_size());
    for (const v1::Job& job : page.jobs()) seen.push_back(job.id());
    request.set_page_token(page.next_page_token());
    ASSERT_LE(page_sizes.size(), 3u);
  } while (!request.page_token().empty());
  EXPECT_THAT(page_sizes, ElementsAre(2, 1));
  EXPECT_EQ(seen, newest_first);
}

TEST_F(ApiTest, CancelAndCheckpointReasonsAreBounded) {
  StartServer();
  const v1::Job job = Submit(SmallSpec("reasons"));
  v1::CheckpointJobRequest checkpoint;
  checkpoint.set_job_id(job.id());
  checkpoint.set_reason(std::string(kMaxReasonBytes + 1, 'a'));
  v1::CheckpointJobResponse checkpointed;
  grpc::Status status = jobs_->CheckpointJob(Context().get(), checkpoint, &checkpointed);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  v1::CancelJobRequest cancel;
  cancel.set_job_id(job.id());
  cancel.set_reason(std::string(kMaxReasonBytes + 1, 'a'));
  v1::CancelJobResponse cancelled;
  status = jobs_->CancelJob(Context().get(), cancel, &cancelled);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("reason"));
  EXPECT_EQ(Get(job.id()).state(), v1::JOB_STATE_PENDING);  // Nothing happened.
  cancel.set_reason(std::string(kMaxReasonBytes, 'a'));
  ASSERT_TRUE(jobs_->CancelJob(Context().get(), cancel, &cancelled).ok());
  EXPECT_EQ(Get(job.id()).state_reason(), cancel.reason());
}

TEST_F(ApiTest, BusyPortIsAnErrorNotACrash) {
  StartServer();
  ServerOptions second = FastOptions(TempDbPath("second"));
  const absl::Cleanup remove_db = [&] { RemoveDb(second.db_path); };
  second.listen = absl::StrCat("127.0.0.1:", server_->port());
  absl::StatusOr<std::unique_ptr<CoordinatorServer>> s = CoordinatorServer::Start(second);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(s.status().message(), HasSubstr("cannot listen on"));
}

TEST_F(ApiTest, UnknownJobIsNotFound) {
  StartServer();
  v1::GetJobRequest request;
  request.set_job_id("j-19700101-999999");
  v1::GetJobResponse response;
  EXPECT_EQ(jobs_->GetJob(Context().get(), request, &response).error_code(),
            grpc::StatusCode::NOT_FOUND);
}

TEST_F(ApiTest, SubmitIsIdempotentPerRequestId) {
  StartServer();
  const v1::Job a = Submit(SmallSpec(), "req-1");
  const v1::Job b = Submit(SmallSpec(), "req-1");
  const v1::Job c = Submit(SmallSpec(), "req-2");
  EXPECT_EQ(a.id(), b.id());
  EXPECT_NE(a.id(), c.id());
  // The same key on another spec is a client bug, not a retry.
  v1::SubmitJobRequest reused;
  *reused.mutable_spec() = SmallSpec("another");
  reused.set_request_id("req-1");
  v1::SubmitJobResponse response;
  const grpc::Status status = jobs_->SubmitJob(Context().get(), reused, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_THAT(status.error_message(), HasSubstr(a.id()));
}

TEST_F(ApiTest, TooManyWorkersIsAFieldViolation) {
  StartServer();
  v1::JobSpec spec = SmallSpec();
  spec.mutable_resources()->set_workers(kMaxJobWorkers + 1);
  v1::ValidateJobRequest request;
  *request.mutable_spec() = spec;
  v1::ValidateJobResponse response;
  const grpc::Status status = jobs_->ValidateJob(Context().get(), request, &response);
  ASSERT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(FieldViolations(status),
              Contains(Pair("resources.workers", "at most 65536 workers per job, got 65537")));
}

TEST_F(ApiTest, RequestsAreCheckedFieldByField) {
  StartServer();
  // The message names the field, as a request's and not a spec's ("invalid job spec (1
  // problem)" led a bad page token's).
  auto expect_bad = [](const grpc::Status& status, const std::string& field) {
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << field;
    EXPECT_THAT(FieldViolations(status), Contains(Pair(field, ::testing::_))) << field;
    EXPECT_THAT(status.error_message(), ::testing::StartsWith("invalid request: " + field + ": "));
  };
  v1::GetJobResponse got;
  expect_bad(jobs_->GetJob(Context().get(), v1::GetJobRequest(), &got), "job_id");
  v1::CancelJobResponse cancelled;
  expect_bad(jobs_->CancelJob(Context().get(), v1::CancelJobRequest(), &cancelled), "job_id");
  v1::ListJobEventsResponse events;
  expect_bad(jobs_->ListJobEvents(Context().get(), v1::ListJobEventsRequest(), &events), "job_id");
  {
    auto context = Context();
    auto reader = jobs_->WatchJob(context.get(), v1::WatchJobRequest());
    expect_bad(reader->Finish(), "job_id");
  }
  const v1::Job job = Submit(SmallSpec());
  {
    v1::StreamLogsRequest logs;
    logs.set_job_id(job.id());
    logs.set_rank(-1);
    auto context = Context();
    expect_bad(jobs_->StreamLogs(context.get(), logs)->Finish(), "rank");
  }
  // A rank or attempt the job never had (it gave no line, and OK).
  for (const auto& [rank, attempt, field] :
       std::vector<std::tuple<int, int, std::string>>{{4, 0, "rank"}, {0, 2, "attempt"}}) {
    v1::StreamLogsRequest logs;
    logs.set_job_id(job.id());
    logs.set_rank(rank);
    logs.set_attempt(attempt);
    auto context = Context();
    expect_bad(jobs_->StreamLogs(context.get(), logs)->Finish(), field);
  }
  v1::ListJobsRequest list;
  list.add_states(v1::JOB_STATE_PENDING);
  list.add_states(v1::JOB_STATE_UNSPECIFIED);
  v1::ListJobsResponse listed;
  expect_bad(jobs_->ListJobs(Context().get(), list, &listed), "states[1]");
  v1::ListJobsRequest bad_list_token;
  bad_list_token.set_page_token("not-a-token");
  expect_bad(jobs_->ListJobs(Context().get(), bad_list_token, &listed), "page_token");
  v1::ListJobsRequest too_many;
  too_many.set_page_size(100000);
  expect_bad(jobs_->ListJobs(Context().get(), too_many, &listed), "page_size");
  v1::ListJobEventsRequest bad_token;
  bad_token.set_job_id(job.id());
  bad_token.set_page_token("not-a-token");
  expect_bad(jobs_->ListJobEvents(Context().get(), bad_token, &events), "page_token");
  v1::ListJobEventsRequest too_big;
  too_big.set_job_id(job.id());
  too_big.set_page_size(1001);
  expect_bad(jobs_->ListJobEvents(Context().get(), too_big, &events), "page_size");
}

TEST_F(ApiTest, ListJobEventsPagesThroughTheHistory) {
  StartServer();
  const v1::Job job = Submit(SmallSpec());
  BackgroundHeartbeats beats;
  auto workers = Workers(4, beats);
  std::vector<v1::Assignment> as = Assignments(workers);
  for (int r = 0; r < 4; ++r) ASSERT_TRUE(workers[r]->Report(as[r], v1::WORKER_STATE_RUNNING).ok());
  for (int step = 1; step <= 5; ++step) ASSERT_TRUE(workers[3]->Metrics(as[3], step, 1.0).ok());
  for (int r = 0; r < 4; ++r)
    ASSERT_TRUE(workers[r]->Report(as[r], v1::WORKER_STATE_SUCCEEDED).ok());
  AwaitState(job.id(), v1::JOB_STATE_SUCCEEDED);
  // PENDING SCHEDULED RUNNING, five metrics reports, SUCCEEDED: in pages of two.
  v1::ListJobEventsRequest request;
  request.set_job_id(job.id());
  request.set_page_size(2);
  std::vector<v1::JobEvent> events;
  int pages = 0;
  do {
    v1::ListJobEventsResponse page;
    ASSERT_TRUE(jobs_->ListJobEvents(Context().get(), request, &page).ok());
    EXPECT_LE(page.events_size(), 2);
    events.insert(events.end(), page.events().begin(), page.events().end());
    request.set_page_token(page.next_page_token());
    ++pages;
  } while (!request.page_token().empty());
  ASSERT_EQ(events.size(), 9u);
  EXPECT_EQ(pages, 5);
  for (size_t i = 0; i < events.size(); ++i) EXPECT_EQ(events[i].sequence(), int64_t(i) + 1);
  EXPECT_EQ(events[0].state(), v1::JOB_STATE_PENDING);
  EXPECT_EQ(events[1].state(), v1::JOB_STATE_SCHEDULED);
  EXPECT_EQ(events[2].state(), v1::JOB_STATE_RUNNING);
  for (int i = 3; i < 8; ++i) EXPECT_EQ(events[i].metrics().step(), i - 2);
  EXPECT_EQ(events[8].state(), v1::JOB_STATE_SUCCEEDED);
  v1::ListJobEventsRequest unknown;
  unknown.set_job_id("j-19700101-999999");
  v1::ListJobEventsResponse none;
  EXPECT_EQ(jobs_->ListJobEvents(Context().get(), unknown, &none).error_code(),
            grpc::StatusCode::NOT_FOUND);
}

TEST_F(ApiTest, HundredConcurrentSubmitsAreStoredExactlyOnce) {
  StartServer();
  // 100 clients at once: 60 with their own request id, 40 retrying 10 shared ones (same spec).
  std::vector<std::future<std::string>> ids;
  for (int i = 0; i < 100; ++i) {
    ids.push_back(std::async(std::launch::async, [this, i] {
      const std::string request_id =
          i < 60 ? absl::StrCat("own-", i) : absl::StrCat("shared-", i % 10);
      return Submit(SmallSpec(request_id), request_id).id();
    }));
  }
  std::set<std::string> distinct;
  for (auto& f : ids) distinct.insert(f.get());
  EXPECT_EQ(distinct.size(), 70u);
  std::set<std::string> listed;
  std::string token;
  do {
    v1::ListJobsRequest request;
    request.set_page_size(30);
    request.set_page_token(token);
    v1::ListJobsResponse page;
    ASSERT_TRUE(jobs_->ListJobs(Context().get(), request, &page).ok());
    for (const v1::Job& job : page.jobs()) EXPECT_TRUE(listed.insert(job.id()).second);
    token = page.next_page_token();
  } while (!token.empty());
  EXPECT_EQ(listed, distinct);
}

TEST_F(ApiTest, ListFiltersByState) {
  StartServer();
  const v1::Job keep = Submit(SmallSpec("keep"));
  const v1::Job drop = Submit(SmallSpec("drop"));
  v1::CancelJobRequest cancel;
  cancel.set_job_id(drop.id());
  v1::CancelJobResponse cancelled;
  ASSERT_TRUE(jobs_->CancelJob(Context().get(), cancel, &cancelled).ok());
  v1::ListJobsRequest request;
  request.add_states(v1::JOB_STATE_CANCELLED);
  v1::ListJobsResponse page;
  ASSERT_TRUE(jobs_->ListJobs(Context().get(), request, &page).ok());
  ASSERT_EQ(page.jobs_size(), 1);
  EXPECT_EQ(page.jobs(0).id(), drop.id());
  request.set_page_token("not-a-token");
  EXPECT_EQ(jobs_->ListJobs(Context().get(), request, &page).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(ApiTest, AuthTokenIsRequiredWhenConfigured) {
  ServerOptions options = FastOptions(db_path_);
  options.auth_token = "s3cret-token";
  StartServer(options);
  v1::ListJobsRequest request;
  v1::ListJobsResponse response;
  grpc::Status status = jobs_->ListJobs(Context().get(), request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(status.error_message(), HasSubstr("authorization: Bearer"));
  status = jobs_->ListJobs(Context("wrong-token").get(), request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  status = jobs_->ListJobs(Context("s3cret-token").get(), request, &response);
  EXPECT_TRUE(status.ok()) << status.error_message();
  // Workers need it too.
  auto workers = v1::WorkerService::NewStub(Channel());
  v1::RegisterWorkerRequest reg;
  reg.mutable_worker()->set_host("h");
  reg.mutable_worker()->set_device(v1::DEVICE_KIND_CPU);
  v1::RegisterWorkerResponse registered;
  EXPECT_EQ(workers->RegisterWorker(Context().get(), reg, &registered).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

TEST_F(ApiTest, TlsWithBearerToken) {
  const std::string dir = ::testing::TempDir();
  const std::string cert = dir + "/tls-cert.pem", key = dir + "/tls-key.pem";
  const std::string command = absl::StrCat(
      "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost -addext "
      "subjectAltName=IP:127.0.0.1,DNS:localhost -keyout ",
      key, " -out ", cert, " 2>/dev/null");
  ASSERT_EQ(std::system(command.c_str()), 0) << command;
  ServerOptions options = FastOptions(db_path_);
  options.tls_cert_file = cert;
  options.tls_key_file = key;
  options.auth_token = "tok";
  StartServer(options);
  const std::string target = absl::StrCat("127.0.0.1:", server_->port());
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = ReadAll(cert);
  auto secure = v1::JobService::NewStub(grpc::CreateChannel(target, grpc::SslCredentials(ssl)));
  v1::ListJobsRequest request;
  v1::ListJobsResponse response;
  grpc::Status status = secure->ListJobs(Context("tok").get(), request, &response);
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(secure->ListJobs(Context().get(), request, &response).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  // A plaintext client cannot talk to it.
  status = jobs_->ListJobs(Context("tok", absl::Seconds(2)).get(), request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
}

TEST_F(ApiTest, NoAuthWhenNotConfigured) {
  StartServer();
  v1::ListJobsRequest request;
  v1::ListJobsResponse response;
  EXPECT_TRUE(jobs_->ListJobs(Context().get(), request, &response).ok());
  EXPECT_TRUE(jobs_->ListJobs(Context("any-token").get(), request, &response).ok());
}

// One unary call through the generic stub with hand-encoded bytes.
grpc::Status RawUnary(std::shared_ptr<grpc::Channel> channel, const std::string& method,
                      const std::string& request, std::string* response) {
  grpc::GenericStub stub(channel);
  grpc::Slice slice(request);
  grpc::ByteBuffer in(&slice, 1), out;
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
  std::promise<grpc::Status> done;
  stub.UnaryCall(&context, method, grpc::StubOptions(), &in, &out,
                 [&done](grpc::Status s) { done.set_value(s); });
  grpc::Status status = done.get_future().get();
  std::vector<grpc::Slice> slices;
  if (status.ok() && out.Dump(&slices).ok()) {
    for (const grpc::Slice& s : slices)
      response->append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  return status;
}

TEST_F(ApiTest, HealthServiceReportsServing) {
  StartServer();
  std::string response;
  // grpc.health.v1.HealthCheckRequest{service: ""} is empty; SERVING is field 1 = 1.
  const grpc::Status status = RawUnary(Channel(), "/grpc.health.v1.Health/Check", "", &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response, std::string("\x08\x01", 2));
}

TEST_F(ApiTest, HealthWatchSeesNotServingWhenShuttingDown) {
  StartServer();
  grpc::GenericStub stub(Channel());
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  grpc::CompletionQueue cq;
  auto call = stub.PrepareCall(&context, "/grpc.health.v1.Health/Watch", &cq);
  void* tag;
  bool ok;
  auto next = [&](intptr_t want) {
    EXPECT_TRUE(cq.Next(&tag, &ok));
    EXPECT_EQ(reinterpret_cast<intptr_t>(tag), want);
    return ok;
  };
  auto read = [&](intptr_t tag_value) {
    grpc::ByteBuffer out;
    call->Read(&out, reinterpret_cast<void*>(tag_value));
    std::string bytes;
    if (!next(tag_value)) return bytes;
    std::vector<grpc::Slice> slices;
    EXPECT_TRUE(out.Dump(&slices).ok());
    for (const grpc::Slice& slice : slices)
      bytes.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
    return bytes;
  };
  call->StartCall(reinterpret_cast<void*>(1));
  ASSERT_TRUE(next(1));
  grpc::ByteBuffer empty_request(nullptr, 0);  // HealthCheckRequest{service: ""}.
  call->WriteLast(empty_request, grpc::WriteOptions(), reinterpret_cast<void*>(2));
  ASSERT_TRUE(next(2));
  // HealthCheckResponse.status is field 1: SERVING = 1, NOT_SERVING = 2.
  EXPECT_EQ(read(3), std::string("\x08\x01", 2));
  std::thread stop([&] { StopServer(); });
  EXPECT_EQ(read(4), std::string("\x08\x02", 2));
  context.TryCancel();  // Else shutdown waits out its grace for this stream.
  stop.join();
  grpc::Status status;
  call->Finish(&status, reinterpret_cast<void*>(5));
  next(5);
}

TEST_F(ApiTest, ReflectionListsTheServices) {
  StartServer();
  grpc::GenericStub stub(Channel());
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
  grpc::CompletionQueue cq;
  auto call = stub.PrepareCall(
      &context, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq);
  void* tag;
  bool ok;
  auto next = [&](intptr_t want) {
    EXPECT_TRUE(cq.Next(&tag, &ok));
    EXPECT_EQ(reinterpret_cast<intptr_t>(tag), want);
    return ok;
  };
  call->StartCall(reinterpret_cast<void*>(1));
  ASSERT_TRUE(next(1));
  // ServerReflectionRequest{list_services: ""}: field 7, length 0.
  grpc::Slice request(std::string("\x3a\x00", 2));
  grpc::ByteBuffer in(&request, 1);
  call->Write(in, reinterpret_cast<void*>(2));
  ASSERT_TRUE(next(2));
  grpc::ByteBuffer out;
  call->Read(&out, reinterpret_cast<void*>(3));
  ASSERT_TRUE(next(3));
  call->WritesDone(reinterpret_cast<void*>(4));
  next(4);
  grpc::Status status;
  call->Finish(&status, reinterpret_cast<void*>(5));
  next(5);
  std::vector<grpc::Slice> slices;
  ASSERT_TRUE(out.Dump(&slices).ok());
  std::string bytes;
  for (const grpc::Slice& s : slices)
    bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  EXPECT_THAT(bytes, HasSubstr("mimo.v1.JobService"));
  EXPECT_THAT(bytes, HasSubstr("mimo.v1.WorkerService"));
  EXPECT_THAT(bytes, HasSubstr("grpc.health.v1.Health"));
}

// GET http://127.0.0.1:port/metrics over a plain socket.
std::string HttpGet(int port, const std::string& path) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
  std::string body;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    const std::string request = absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: x\r\n\r\n");
    EXPECT_EQ(write(fd, request.data(), request.size()), static_cast<ssize_t>(request.size()));
    char buffer[4096];
    ssize_t n;
    while ((n = read(fd, buffer, sizeof(buffer))) > 0) body.append(buffer, n);
  }
  close(fd);
  return body;
}

// The metrics page once it has `text` (or after 10 s).
std::string AwaitMetrics(int port, const std::string& text) {
  std::string page;
  for (const absl::Time deadline = absl::Now() + absl::Seconds(10);
       !absl::StrContains(page, text) && absl::Now() < deadline;
       absl::SleepFor(absl::Milliseconds(10))) {
    page = HttpGet(port, "/metrics");
  }
  return page;
}

// The metrics page once it lacks `text` (or after 10 s).
std::string AwaitNoMetrics(int port, const std::string& text) {
  std::string page = HttpGet(port, "/metrics");
  for (const absl::Time deadline = absl::Now() + absl::Seconds(10);
       absl::StrContains(page, text) && absl::Now() < deadline;
       absl::SleepFor(absl::Milliseconds(10))) {
    page = HttpGet(port, "/metrics");
  }
  return page;
}

TEST_F(ApiTest, PrometheusEndpointCountsJobsAndRequests) {
  ServerOptions options = FastOptions(db_path_);
  options.metrics_listen = "127.0.0.1:0";
  StartServer(options);
  Submit(SmallSpec());
  // Once a tick has refreshed the job gauges (a loaded machine may take a while).
  const std::string page = AwaitMetrics(server_->metrics_port(), "mimo_jobs{state=\"pending\"} 1");
  EXPECT_THAT(page, HasSubstr("200 OK"));
  EXPECT_THAT(page, HasSubstr("mimo_jobs{state=\"pending\"} 1"));
  EXPECT_THAT(page, HasSubstr("mimo_jobs{state=\"running\"} 0"));
  EXPECT_THAT(page, HasSubstr("mimo_grpc_requests_total{code=\"OK\",method=\"SubmitJob\"} 1"));
  EXPECT_THAT(page, HasSubstr("mimo_grpc_request_duration_seconds_count{method=\"SubmitJob\"} 1"));
}

TEST_F(ApiTest, PrometheusEndpointShowsRunningJobsTrainingMetrics) {
  ServerOptions options = FastOptions(db_path_);
  options.metrics_listen = "127.0.0.1:0";
  StartServer(options);
  BackgroundHeartbeats beats;  // Alive however long the ticks take on a loaded machine.
  auto workers = Workers(4, beats);
  const v1::Job job = Submit(SmallSpec());
  std::vector<v1::Assignment> as = Assignments(workers);
  ASSERT_EQ(as.size(), 4u);
  for (int r = 0; r < 4; ++r) ASSERT_TRUE(workers[r]->Report(as[r], v1::WORKER_STATE_RUNNING).ok());
  AwaitState(job.id(), v1::JOB_STATE_RUNNING);
  ASSERT_TRUE(workers[2]->Metrics(as[2], 7, 2.5).ok());
  // Once a tick has refreshed the gauges.
  const std::string label = absl::StrCat("{job=\"", job.id(), "\"}");
  std::string page = AwaitMetrics(server_->metrics_port(), "mimo_job_step" + label + " 7");
  EXPECT_THAT(page, HasSubstr("mimo_job_step" + label + " 7"));
  EXPECT_THAT(page, HasSubstr("mimo_job_loss" + label + " 2.5"));
  EXPECT_THAT(page, HasSubstr("mimo_job_tokens_per_second" + label + " 1000"));
  // Once the job ends its series go.
  for (int r = 0; r < 4; ++r) {
    ASSERT_TRUE(workers[r]->Report(as[r], v1::WORKER_STATE_SUCCEEDED).ok());
  }
  AwaitState(job.id(), v1::JOB_STATE_SUCCEEDED);
  page = AwaitNoMetrics(server_->metrics_port(), "mimo_job_step{");  // Once a tick has seen it.
  EXPECT_THAT(page, Not(HasSubstr("mimo_job_step{")));
}

TEST_F(ApiTest, StreamsEndWhenTheServerShutsDown) {
  StartServer();
  const v1::Job job = Submit(SmallSpec());
  std::promise<grpc::Status> ended;
  std::thread watcher([&] {
    v1::WatchJobRequest request;
    request.set_job_id(job.id());
    auto context = Context("", absl::Seconds(30));
    auto reader = jobs_->WatchJob(context.get(), request);
    v1::WatchJobResponse response;
    while (reader->Read(&response)) {
    }
    ended.set_value(reader->Finish());
  });
  absl::SleepFor(absl::Milliseconds(100));
  const absl::Time start = absl::Now();
  StopServer();
  const grpc::Status status = ended.get_future().get();
  watcher.join();
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
}

}  // namespace
}  // namespace mimo::coordinator::testing
