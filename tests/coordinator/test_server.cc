// A real coordinator on loopback with a fresh SQLite file, clients, and fake workers that speak
// WorkerService, for the coordinator's integration tests.
#include "tests/coordinator/test_server.h"

#include <unistd.h>

#include <cstdio>

#include "google/protobuf/util/time_util.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"

namespace mimo::coordinator::testing {

using google::protobuf::util::TimeUtil;

std::vector<std::pair<std::string, std::string>> FieldViolations(const grpc::Status& status) {
  google::rpc::Status rpc;
  EXPECT_TRUE(rpc.ParseFromString(status.error_details()));
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& any : rpc.details()) {
    google::rpc::BadRequest bad;
    if (!any.UnpackTo(&bad)) continue;
    for (const auto& v : bad.field_violations()) out.emplace_back(v.field(), v.description());
  }
  return out;
}

v1::JobSpec SmallSpec(const std::string& name) {
  v1::JobSpec spec;
  spec.set_name(name);
  spec.set_kind(v1::JobSpec::KIND_TRAIN);
  v1::Transformer t;
  t.set_num_layers(2);
  t.set_hidden_size(64);
  t.set_num_attention_heads(4);
  t.set_num_query_groups(2);
  t.set_ffn_hidden_size(128);
  v1::Module* vision = spec.add_modules();
  vision->set_name("vision");
  vision->mutable_vision()->set_image_size(32);
  vision->mutable_vision()->set_patch_size(8);
  vision->mutable_vision()->set_num_channels(3);
  *vision->mutable_vision()->mutable_transformer() = t;
  vision->mutable_vision()->mutable_projector()->set_kind(v1::Projector::KIND_LINEAR);
  vision->mutable_parallelism()->set_dp(2);
  vision->mutable_parallelism()->set_rank_offset(0);
  v1::Module* language = spec.add_modules();
  language->set_name("language");
  language->mutable_language()->set_vocab_size(256);
  language->mutable_language()->set_max_sequence_length(256);
  *language->mutable_language()->mutable_transformer() = t;
  v1::MoE* moe = language->mutable_language()->mutable_moe();
  moe->set_num_experts(4);
  moe->set_top_k(2);
  moe->set_router_score(v1::MoE::ROUTER_SCORE_SOFTMAX);
  language->mutable_parallelism()->set_dp(2);
  language->mutable_parallelism()->set_ep(2);
  language->mutable_parallelism()->set_rank_offset(2);
  v1::Training* training = spec.mutable_training();
  training->set_steps(10);
  training->set_global_batch_size(8);
  training->set_micro_batch_size(2);
  training->set_seq_length(128);
  training->set_packing(true);
  training->set_precision(v1::PRECISION_FP32);
  training->mutable_optimizer()->set_lr(3e-4);
  training->mutable_optimizer()->set_adam_beta1(0.9);
  training->mutable_optimizer()->set_adam_beta2(0.95);
  training->mutable_optimizer()->set_adam_eps(1e-8);
  spec.mutable_data()->mutable_synthetic()->set_num_samples(1000);
  spec.mutable_resources()->set_workers(4);
  spec.mutable_resources()->set_device(v1::DEVICE_KIND_CPU);
  return spec;
}

std::unique_ptr<grpc::ClientContext> Context(const std::string& token, absl::Duration timeout) {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  if (!token.empty()) context->AddMetadata("authorization", "Bearer " + token);
  return context;
}

FakeWorker::FakeWorker(std::shared_ptr<grpc::Channel> channel, std::string host, int local_index,
                       v1::DeviceKind device, const v1::RunningAssignment& resume)
    : channel_(channel), stub_(v1::WorkerService::NewStub(channel)) {
  v1::RegisterWorkerRequest request;
  request.mutable_worker()->set_host(std::move(host));
  request.mutable_worker()->set_local_index(local_index);
  request.mutable_worker()->set_device(device);
  request.mutable_worker()->set_pid(getpid());
  *request.mutable_resume() = resume;
  v1::RegisterWorkerResponse response;
  const grpc::Status status = stub_->RegisterWorker(Context().get(), request, &response);
  EXPECT_TRUE(status.ok()) << status.error_message();
  id_ = response.worker_id();
}

std::optional<v1::Assignment> FakeWorker::Assignment(absl::Duration wait) {
  v1::GetAssignmentRequest request;
  request.set_worker_id(id_);
  *request.mutable_wait() = TimeUtil::NanosecondsToDuration(absl::ToInt64Nanoseconds(wait));
  v1::GetAssignmentResponse response;
  const grpc::Status status =
      stub_->GetAssignment(Context("", wait + absl::Seconds(5)).get(), request, &response);
  EXPECT_TRUE(status.ok()) << status.error_message();
  if (!response.has_assignment()) return std::nullopt;
  return response.assignment();
}

v1::HeartbeatResponse FakeWorker::Beat(bool leaving) {
  v1::HeartbeatRequest request;
  request.set_worker_id(id_);
  request.set_leaving(leaving);
  v1::HeartbeatResponse response;
  EXPECT_TRUE(stub_->Heartbeat(Context().get(), request, &response).ok());
  return response;
}

grpc::Status FakeWorker::Report(const v1::Assignment& a, v1::WorkerState state, int exit_code,
                                const std::string& message, bool stopped_after_checkpoint,
                                bool leaving) {
  v1::ReportStatusRequest request;
  request.set_worker_id(id_);
  request.set_job_id(a.job_id());
  request.set_attempt(a.attempt());
  request.set_rank(a.rank().rank());
  request.set_state(state);
  request.set_exit_code(exit_code);
  request.set_message(message);
  request.set_stopped_after_checkpoint(stopped_after_checkpoint);
  request.set_leaving(leaving);
  v1::ReportStatusResponse response;
  return stub_->ReportStatus(Context().get(), request, &response);
}

grpc::Status FakeWorker::Metrics(const v1::Assignment& a, int64_t step, double loss) {
  v1::ReportMetricsRequest request;
  request.set_worker_id(id_);
  request.set_job_id(a.job_id());
  request.set_attempt(a.attempt());
  request.set_rank(a.rank().rank());
  request.mutable_metrics()->set_step(step);
  request.mutable_metrics()->set_loss(loss);
  request.mutable_metrics()->set_tokens_per_second(1000);
  v1::ReportMetricsResponse response;
  return stub_->ReportMetrics(Context().get(), request, &response);
}

grpc::Status FakeWorker::Logs(const v1::Assignment& a, const std::vector<std::string>& lines) {
  auto context = Context();
  v1::ReportLogsResponse response;
  auto writer = stub_->ReportLogs(context.get(), &response);
  v1::ReportLogsRequest request;
  request.set_worker_id(id_);
  request.set_job_id(a.job_id());
  request.set_attempt(a.attempt());
  request.set_rank(a.rank().rank());
  for (const std::string& line : lines) request.add_lines(line);
  writer->Write(request);
  writer->WritesDone();
  return writer->Finish();
}

BackgroundHeartbeats::BackgroundHeartbeats(const std::vector<FakeWorker*>& workers,
                                           absl::Duration period)
    : period_(period) {
  for (const FakeWorker* w : workers) Add(w);
  thread_ = std::thread([this] { Run(); });
}

BackgroundHeartbeats::~BackgroundHeartbeats() {
  {
    absl::MutexLock lock(&mu_);
    done_ = true;
  }
  thread_.join();
}

void BackgroundHeartbeats::Add(const FakeWorker* worker) {
  absl::MutexLock lock(&mu_);
  workers_.push_back({worker->id(), v1::WorkerService::NewStub(worker->channel())});
}

void BackgroundHeartbeats::Remove(const FakeWorker* worker) {
  absl::MutexLock lock(&mu_);  // Waits for a round in progress.
  std::erase_if(workers_, [&](const Beating& b) { return b.worker_id == worker->id(); });
}

void BackgroundHeartbeats::Clear() {
  absl::MutexLock lock(&mu_);
  workers_.clear();
}

void BackgroundHeartbeats::Run() {
  absl::MutexLock lock(&mu_);
  while (!done_) {
    Round();
    mu_.AwaitWithTimeout(absl::Condition(&done_), period_);
  }
}

void BackgroundHeartbeats::Round() {
  struct Call {
    grpc::ClientContext context;
    v1::HeartbeatRequest request;
    v1::HeartbeatResponse response;
    grpc::Status status;
    std::unique_ptr<grpc::ClientAsyncResponseReader<v1::HeartbeatResponse>> reader;
  };
  grpc::CompletionQueue queue;
  std::vector<std::unique_ptr<Call>> calls;
  for (const Beating& b : workers_) {
    auto call = std::make_unique<Call>();
    call->context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    call->request.set_worker_id(b.worker_id);
    call->reader = b.stub->AsyncHeartbeat(&call->context, call->request, &queue);
    call->reader->Finish(&call->response, &call->status, call.get());
    calls.push_back(std::move(call));
  }
  void* tag;
  bool ok;
  for (size_t finished = 0; finished < calls.size() && queue.Next(&tag, &ok); ++finished) {
  }
  queue.Shutdown();
  while (queue.Next(&tag, &ok)) {
  }
}

void CoordinatorFixture::StartServer(ServerOptions options) {
  options_ = options;
  absl::StatusOr<std::unique_ptr<CoordinatorServer>> server = CoordinatorServer::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  server_ = *std::move(server);
  // A restart listens where this server did, so existing clients reconnect.
  options_.listen = absl::StrCat("127.0.0.1:", server_->port());
  jobs_ = v1::JobService::NewStub(Channel());
}

std::shared_ptr<grpc::Channel> CoordinatorFixture::Channel() const {
  return grpc::CreateChannel(absl::StrCat("127.0.0.1:", server_->port()),
                             grpc::InsecureChannelCredentials());
}

v1::Job CoordinatorFixture::Submit(const v1::JobSpec& spec, const std::string& request_id) {
  v1::SubmitJobRequest request;
  *request.mutable_spec() = spec;
  request.set_request_id(request_id);
  v1::SubmitJobResponse response;
  const grpc::Status status =
      jobs_->SubmitJob(Context(options_.auth_token).get(), request, &response);
  EXPECT_TRUE(status.ok()) << status.error_message();
  return response.job();
}

v1::Job CoordinatorFixture::Get(const std::string& id) {
  v1::GetJobRequest request;
  request.set_job_id(id);
  v1::GetJobResponse response;
  const grpc::Status status = jobs_->GetJob(Context(options_.auth_token).get(), request, &response);
  EXPECT_TRUE(status.ok()) << status.error_message();
  return response.job();
}

v1::Job CoordinatorFixture::AwaitState(const std::string& id, v1::JobState state,
                                       absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  v1::Job job = Get(id);
  while (job.state() != state && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(10));
    job = Get(id);
  }
  EXPECT_EQ(v1::JobState_Name(job.state()), v1::JobState_Name(state)) << job.state_reason();
  return job;
}

std::vector<FakeWorker*> CoordinatorFixture::Ptrs(
    const std::vector<std::unique_ptr<FakeWorker>>& workers) {
  std::vector<FakeWorker*> out;
  for (const auto& w : workers) out.push_back(w.get());
  return out;
}

std::vector<std::unique_ptr<FakeWorker>> CoordinatorFixture::Workers(int n,
                                                                     const std::string& host) {
  std::vector<std::unique_ptr<FakeWorker>> workers;
  for (int i = 0; i < n; ++i) workers.push_back(std::make_unique<FakeWorker>(Channel(), host, i));
  return workers;
}

std::vector<std::unique_ptr<FakeWorker>> CoordinatorFixture::Workers(int n,
                                                                     BackgroundHeartbeats& beats,
                                                                     const std::string& host) {
  std::vector<std::unique_ptr<FakeWorker>> workers;
  for (int i = 0; i < n; ++i) {
    workers.push_back(std::make_unique<FakeWorker>(Channel(), host, i));
    beats.Add(workers.back().get());
  }
  return workers;
}

std::vector<v1::Assignment> CoordinatorFixture::Assignments(
    std::vector<std::unique_ptr<FakeWorker>>& workers) {
  // Each waits for its rank in turn; the others beat meanwhile, as live workers do.
  BackgroundHeartbeats beats(Ptrs(workers));
  std::vector<v1::Assignment> out(workers.size());
  for (auto& w : workers) {
    std::optional<v1::Assignment> a = w->Assignment(absl::Seconds(5));
    EXPECT_TRUE(a.has_value()) << "worker " << w->id() << " got no assignment";
    if (a) out.at(a->rank().rank()) = *a;
  }
  return out;
}

}  // namespace mimo::coordinator::testing
