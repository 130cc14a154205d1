// The gRPC services (JobService, WorkerService): thin adapters from protos to the JobManager,
// with authentication, request metrics and Status conversion done once for every method.
#include "coordinator/services.h"

#include <algorithm>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "coordinator/grpc_status.h"
#include "coordinator/job_state.h"
#include "coordinator/message_limits.h"
#include "coordinator/plan_proto.h"
#include "google/protobuf/util/time_util.h"

namespace mimo::coordinator {
namespace {

using google::protobuf::util::TimeUtil;

// How long a stream sleeps between checks for a cancelled client.
constexpr absl::Duration kStreamPoll = absl::Seconds(1);
// Log lines per StreamLogsResponse.
constexpr size_t kLogBatch = 500;
// Lines read from the store at a time by StreamLogs.
constexpr int kLogPage = 10000;
// ListJobEvents page sizes.
constexpr int kDefaultEventPage = 100;
constexpr int kMaxEventPage = 1000;

const char* CodeName(grpc::StatusCode code) {
  static const char* const kNames[] = {"OK",
                                       "CANCELLED",
                                       "UNKNOWN",
                                       "INVALID_ARGUMENT",
                                       "DEADLINE_EXCEEDED",
                                       "NOT_FOUND",
                                       "ALREADY_EXISTS",
                                       "PERMISSION_DENIED",
                                       "RESOURCE_EXHAUSTED",
                                       "FAILED_PRECONDITION",
                                       "ABORTED",
                                       "OUT_OF_RANGE",
                                       "UNIMPLEMENTED",
                                       "INTERNAL",
                                       "UNAVAILABLE",
                                       "DATA_LOSS",
                                       "UNAUTHENTICATED"};
  const int i = static_cast<int>(code);
  return i >= 0 && i <= 16 ? kNames[i] : "UNKNOWN";
}

// Constant-time comparison, so the token cannot be guessed byte by byte from timings.
bool SameSecret(absl::string_view a, absl::string_view b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < a.size(); ++i) diff |= a[i] ^ b[i % std::max<size_t>(b.size(), 1)];
  return diff == 0 && !b.empty();
}

grpc::Status Authenticate(const ServiceContext& ctx, const grpc::ServerContext& context) {
  if (ctx.auth_token.empty()) return grpc::Status::OK;
  const auto& metadata = context.client_metadata();
  auto it = metadata.find("authorization");
  if (it == metadata.end()) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "missing 'authorization: Bearer <token>' metadata");
  }
  const absl::string_view value(it->second.data(), it->second.size());
  constexpr absl::string_view kBearer = "Bearer ";
  if (value.substr(0, kBearer.size()) != kBearer ||
      !SameSecret(value.substr(kBearer.size()), ctx.auth_token)) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "invalid bearer token");
  }
  return grpc::Status::OK;
}

// Runs one RPC body after authentication and records its outcome.
template <typename Body>
grpc::Status Handle(const ServiceContext& ctx, const char* method,
                    const grpc::ServerContext& context, Body&& body) {
  const absl::Time start = absl::Now();
  grpc::Status status = Authenticate(ctx, context);
  if (status.ok()) status = body();
  if (ctx.metrics != nullptr) {
    ctx.metrics->ObserveRequest(method, CodeName(status.error_code()),
                                absl::ToDoubleSeconds(absl::Now() - start));
  }
  return status;
}

absl::Duration FromProto(const google::protobuf::Duration& d) {
  return absl::Nanoseconds(TimeUtil::DurationToNanoseconds(d));
}

// INVALID_ARGUMENT with one BadRequest field violation, about the request (not a job spec).
grpc::Status BadField(const std::string& field, const std::string& description) {
  return BadRequestStatus(absl::StrCat("invalid request: ", field, ": ", description),
                          {FieldViolation{field, description}});
}

grpc::Status RequireJobId(const std::string& job_id) {
  if (job_id.empty()) return BadField("job_id", "is required");
  return grpc::Status::OK;
}

// A cancel or checkpoint reason becomes the job's state_reason and an event: bounded, so that
// jobs stay small in list pages and watches.
grpc::Status CheckReason(const std::string& reason) {
  if (reason.size() <= kMaxReasonBytes) return grpc::Status::OK;
  return BadField("reason",
                  absl::StrCat("is ", reason.size(), " bytes long; at most ", kMaxReasonBytes));
}

grpc::Status ShuttingDown() {
  return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the coordinator is shutting down");
}

}  // namespace

grpc::Status JobServiceImpl::SubmitJob(grpc::ServerContext* context,
                                       const v1::SubmitJobRequest* request,
                                       v1::SubmitJobResponse* response) {
  return Handle(ctx_, "SubmitJob", *context, [&] {
    std::vector<FieldViolation> violations;
    absl::StatusOr<v1::Job> job =
        ctx_.manager->SubmitJob(request->spec(), request->request_id(), &violations, absl::Now());
    if (!violations.empty()) return InvalidSpecStatus(violations);
    if (!job.ok()) return ToGrpcStatus(job.status());
    *response->mutable_job() = *std::move(job);
    return grpc::Status::OK;
  });
}

grpc::Status JobServiceImpl::GetJob(grpc::ServerContext* context, const v1::GetJobRequest* request,
                                    v1::GetJobResponse* response) {
  return Handle(ctx_, "GetJob", *context, [&] {
    if (grpc::Status s = RequireJobId(request->job_id()); !s.ok()) return s;
    absl::StatusOr<v1::Job> job = ctx_.manager->GetJob(request->job_id());
    if (!job.ok()) return ToGrpcStatus(job.status());
    *response->mutable_job() = *std::move(job);
    return grpc::Status::OK;
  });
}

grpc::Status JobServiceImpl::ListJobs(grpc::ServerContext* context,
                                      const v1::ListJobsRequest* request,
                                      v1::ListJobsResponse* response) {
  return Handle(ctx_, "ListJobs", *context, [&] {
    std::vector<v1::JobState> states;
    for (int i = 0; i < request->states_size(); ++i) {
      const int s = request->states(i);
      if (s == v1::JOB_STATE_UNSPECIFIED || !v1::JobState_IsValid(s)) {
        return BadField(absl::StrCat("states[", i, "]"), absl::StrCat("is not a job state: ", s));
      }
      states.push_back(static_cast<v1::JobState>(s));
    }
    if (request->page_size() < 0 || request->page_size() > JobStore::kMaxPageSize) {
      return BadField("page_size", absl::StrCat("is ", request->page_size(), ", outside [0, ",
                                                JobStore::kMaxPageSize, "]"));
    }
    absl::StatusOr<JobStore::Page> page = ctx_.manager->ListJobs(
        request->page_size(), request->page_token(), states, kMaxListPageBytes);
    // The page size is checked above: a request the store refuses has a bad page_token.
    if (absl::IsInvalidArgument(page.status())) {
      return BadField("page_token", std::string(page.status().message()));
    }
    if (!page.ok()) return ToGrpcStatus(page.status());
    for (v1::Job& job : page->jobs) *response->add_jobs() = std::move(job);
    response->set_next_page_token(page->next_page_token);
    return grpc::Status::OK;
  });
}

grpc::Status JobServiceImpl::CancelJob(grpc::ServerContext* context,
                                       const v1::CancelJobRequest* request,
                                       v1::CancelJobResponse* response) {
  return Handle(ctx_, "CancelJob", *context, [&] {
    if (grpc::Status s = RequireJobId(request->job_id()); !s.ok()) return s;
    if (grpc::Status s = CheckReason(request->reason()); !s.ok()) return s;
    absl::StatusOr<v1::Job> job =
        ctx_.manager->CancelJob(request->job_id(), request->reason(), absl::Now());
    if (!job.ok()) return ToGrpcStatus(job.status());
    *response->mutable_job() = *std::move(job);
    return grpc::Status::OK;
  });
}

grpc::Status JobServiceImpl::CheckpointJob(grpc::ServerContext* context,
                                           const v1::CheckpointJobRequest* request,
                                           v1::CheckpointJobResponse* response) {
  return Handle(ctx_, "CheckpointJob", *context, [&] {
    if (grpc::Status s = RequireJobId(request->job_id()); !s.ok()) return s;
    if (grpc::Status s = CheckReason(request->reason()); !s.ok()) return s;
    absl::StatusOr<v1::Job> job = ctx_.manager->CheckpointJob(request->job_id(), request->stop(),
                                                              request->reason(), absl::Now());
    if (!job.ok()) return ToGrpcStatus(job.status());
    *response->mutable_job() = *std::move(job);
    return grpc::Status::OK;
  });
}

grpc::Status JobServiceImpl::ListJobEvents(grpc::ServerContext* context,
                                           const v1::ListJobEventsRequest* request,
                                           v1::ListJobEventsResponse* response) {
  return Handle(ctx_, "ListJobEvents", *context, [&] {
    if (grpc::Status s = RequireJobId(request->job_id()); !s.ok()) return s;
    int page_size = request->page_size();
    if (page_size < 0 || page_size > kMaxEventPage) {
      return BadField("page_size", absl::StrCat("must be in [0, ", kMaxEventPage, "]"));
    }
    if (page_size == 0) page_size = kDefaultEventPage;
    // The token is the sequence of the last event of the previous page.
    int64_t after = 0;
    if (!request->page_token().empty() &&
        (!absl::SimpleAtoi(request->page_token(), &after) || after <= 0)) {
      return BadField("page_token", "is not a token from a previous ListJobEvents");
    }
    absl::StatusOr<std::vector<v1::JobEvent>> events =
        ctx_.manager->ListEvents(request->job_id(), after, page_size + 1);
    if (!events.ok()) return ToGrpcStatus(events.status());
    // One event more than the page tells whether another page follows.
    if (events->size() > static_cast<size_t>(page_size)) {
      events->resize(page_size);
      response->set_next_page_token(absl::StrCat(events->back().sequence()));
    }
    for (v1::JobEvent& event : *events) *response->add_events() = std::move(event);
    return grpc::Status::OK;
  });
}

grpc::Status JobServiceImpl::WatchJob(grpc::ServerContext* context,
                                      const v1::WatchJobRequest* request,
                                      grpc::ServerWriter<v1::WatchJobResponse>* writer) {
  return Handle(ctx_, "WatchJob", *context, [&] {
    if (grpc::Status s = RequireJobId(request->job_id()); !s.ok()) return s;
    JobManager& m = *ctx_.manager;
    int64_t version = m.version();
    // The events are read before the job: one committed in between is then sent again after
    // the first response (harmless) instead of being counted as seen while the job sent does
    // not show it yet (a watch that never learns that its job ended).
    absl::StatusOr<int64_t> seen = m.LastEventSequence(request->job_id());
    if (!seen.ok()) return ToGrpcStatus(seen.status());
    int64_t sequence = *seen;
    absl::StatusOr<v1::Job> job = m.GetJob(request->job_id());
    if (!job.ok()) return ToGrpcStatus(job.status());
    v1::WatchJobResponse first;
    *first.mutable_job() = *job;
    if (!writer->Write(first)) return grpc::Status::CANCELLED;
    while (!IsTerminal(job->state())) {
      // Events are read after the version, so a change after the read wakes the next wait.
      version = m.WaitForChange(version, absl::Now() + kStreamPoll);
      if (context->IsCancelled()) return grpc::Status::CANCELLED;
      if (m.shutting_down()) return ShuttingDown();
      absl::StatusOr<std::vector<v1::JobEvent>> events = m.ListEvents(request->job_id(), sequence);
      if (!events.ok()) return ToGrpcStatus(events.status());
      for (v1::JobEvent& event : *events) {
        sequence = event.sequence();
        job = m.GetJob(request->job_id());
        if (!job.ok()) return ToGrpcStatus(job.status());
        v1::WatchJobResponse response;
        *response.mutable_job() = *job;
        *response.mutable_event() = std::move(event);
        if (!writer->Write(response)) return grpc::Status::CANCELLED;
      }
    }
    return grpc::Status::OK;
  });
}

grpc::Status JobServiceImpl::StreamLogs(grpc::ServerContext* context,
                                        const v1::StreamLogsRequest* request,
                                        grpc::ServerWriter<v1::StreamLogsResponse>* writer) {
  return Handle(ctx_, "StreamLogs", *context, [&] {
    if (grpc::Status s = RequireJobId(request->job_id()); !s.ok()) return s;
    if (request->has_rank() && request->rank() < 0) return BadField("rank", "must be >= 0");
    if (request->tail_lines() < 0) return BadField("tail_lines", "must be >= 0");
    if (request->attempt() < 0) return BadField("attempt", "must be >= 0");
    JobManager& m = *ctx_.manager;
    JobStore::LogQuery query;
    query.job_id = request->job_id();
    if (request->has_rank()) query.rank = request->rank();
    query.attempt = request->attempt();
    query.tail_lines = request->tail_lines();
    // Pages of the log, so that a long one is never held in memory whole.
    query.max_lines = kLogPage;
    // Unset: the latest attempt's lines, and a follow goes on with every later attempt's, in the
    // order they come (a failed attempt's last lines, from the ranks stopping after the failure,
    // may come after the restart's first ones). Lines name their attempt.
    query.later_attempts = request->attempt() == 0 && request->follow();
    while (true) {
      const int64_t version = m.version();
      absl::StatusOr<v1::Job> job = m.GetJob(request->job_id());
      if (!job.ok()) return ToGrpcStatus(job.status());
      // A rank or attempt the job never had would give no line, silently.
      if (request->has_rank() && request->rank() >= job->spec().resources().workers()) {
        return BadField(
            "rank", absl::StrCat(request->rank(), " is not a rank of job ", job->id(),
                                 ", whose ranks are 0..", job->spec().resources().workers() - 1));
      }
      if (request->attempt() > job->attempt()) {
        return BadField("attempt",
                        absl::StrCat("job ", job->id(), " has had ", job->attempt(), " attempt",
                                     job->attempt() == 1 ? "" : "s", ", not ", request->attempt()));
      }
      if (query.attempt == 0) query.attempt = job->attempt();
      const bool paged = query.tail_lines == 0 || query.after_sequence > 0;
      absl::StatusOr<std::vector<v1::LogLine>> lines = m.ReadLogs(query);
      if (!lines.ok()) return ToGrpcStatus(lines.status());
      // A full page: more lines may follow at once, before anything else is decided.
      const bool more = paged && static_cast<int>(lines->size()) == kLogPage;
      // Follow from the last line sent (from the first line when none was).
      if (!lines->empty()) query.after_sequence = lines->back().sequence();
      query.tail_lines = 0;
      for (size_t at = 0; at < lines->size(); at += kLogBatch) {
        v1::StreamLogsResponse response;
        const size_t end = std::min(lines->size(), at + kLogBatch);
        for (size_t i = at; i < end; ++i) *response.add_lines() = std::move((*lines)[i]);
        if (!writer->Write(response)) return grpc::Status::CANCELLED;
      }
      if (more) continue;
      if (!request->follow()) return grpc::Status::OK;
      if (IsTerminal(job->state()) && lines->empty()) return grpc::Status::OK;
      if (lines->empty()) {
        m.WaitForChange(version, absl::Now() + kStreamPoll);
        if (context->IsCancelled()) return grpc::Status::CANCELLED;
        if (m.shutting_down()) return ShuttingDown();
      }
    }
  });
}

grpc::Status JobServiceImpl::ValidateJob(grpc::ServerContext* context,
                                         const v1::ValidateJobRequest* request,
                                         v1::ValidateJobResponse* response) {
  return Handle(ctx_, "ValidateJob", *context, [&] {
    std::vector<FieldViolation> violations;
    absl::StatusOr<parallel::RankPlan> plan = ValidateJobSpec(request->spec(), &violations);
    if (!violations.empty()) return InvalidSpecStatus(violations);
    if (!plan.ok()) return ToGrpcStatus(plan.status());
    violations = ctx_.manager->CheckEmbeddedWorkersSuffice(request->spec());
    if (!violations.empty()) return InvalidSpecStatus(violations);
    *response->mutable_plan() = RankPlanToProto(*plan, GroupMembers::kOmit);
    return grpc::Status::OK;
  });
}

grpc::Status WorkerServiceImpl::RegisterWorker(grpc::ServerContext* context,
                                               const v1::RegisterWorkerRequest* request,
                                               v1::RegisterWorkerResponse* response) {
  return Handle(ctx_, "RegisterWorker", *context, [&] {
    absl::StatusOr<std::string> id = ctx_.manager->RegisterWorker(
        request->worker(), request->resume(), [] { return absl::Now(); });
    if (!id.ok()) return ToGrpcStatus(id.status());
    response->set_worker_id(*id);
    const JobManager::Options& o = ctx_.manager->options();
    *response->mutable_heartbeat_interval() =
        TimeUtil::NanosecondsToDuration(absl::ToInt64Nanoseconds(o.heartbeat_interval));
    *response->mutable_heartbeat_timeout() =
        TimeUtil::NanosecondsToDuration(absl::ToInt64Nanoseconds(o.heartbeat_timeout));
    *response->mutable_reattach_grace() =
        TimeUtil::NanosecondsToDuration(absl::ToInt64Nanoseconds(o.reattach_grace));
    return grpc::Status::OK;
  });
}

grpc::Status WorkerServiceImpl::Heartbeat(grpc::ServerContext* context,
                                          const v1::HeartbeatRequest* request,
                                          v1::HeartbeatResponse* response) {
  return Handle(ctx_, "Heartbeat", *context, [&] {
    *response = ctx_.manager->Heartbeat(request->worker_id(), request->leaving(),
                                        [] { return absl::Now(); });
    return grpc::Status::OK;
  });
}

grpc::Status WorkerServiceImpl::GetAssignment(grpc::ServerContext* context,
                                              const v1::GetAssignmentRequest* request,
                                              v1::GetAssignmentResponse* response) {
  return Handle(ctx_, "GetAssignment", *context, [&] {
    const absl::Time deadline =
        std::min(absl::Now() + FromProto(request->wait()), absl::FromChrono(context->deadline()));
    absl::StatusOr<std::optional<v1::Assignment>> a =
        ctx_.manager->WaitAssignment(request->worker_id(), deadline);
    if (!a.ok()) return ToGrpcStatus(a.status());
    if (*a) *response->mutable_assignment() = **std::move(a);
    return grpc::Status::OK;
  });
}

grpc::Status WorkerServiceImpl::ReportStatus(grpc::ServerContext* context,
                                             const v1::ReportStatusRequest* request,
                                             v1::ReportStatusResponse*) {
  return Handle(ctx_, "ReportStatus", *context,
                [&] { return ToGrpcStatus(ctx_.manager->ReportStatus(*request, absl::Now())); });
}

grpc::Status WorkerServiceImpl::ReportMetrics(grpc::ServerContext* context,
                                              const v1::ReportMetricsRequest* request,
                                              v1::ReportMetricsResponse*) {
  return Handle(ctx_, "ReportMetrics", *context,
                [&] { return ToGrpcStatus(ctx_.manager->ReportMetrics(*request, absl::Now())); });
}

grpc::Status WorkerServiceImpl::ReportLogs(grpc::ServerContext* context,
                                           grpc::ServerReader<v1::ReportLogsRequest>* reader,
                                           v1::ReportLogsResponse*) {
  return Handle(ctx_, "ReportLogs", *context, [&] {
    v1::ReportLogsRequest request;
    while (reader->Read(&request)) {
      const std::vector<std::string> lines(request.lines().begin(), request.lines().end());
      const absl::Status status =
          ctx_.manager->ReportLogs(request.worker_id(), request.job_id(), request.attempt(),
                                   request.rank(), lines, absl::Now());
      if (!status.ok()) return ToGrpcStatus(status);
    }
    return grpc::Status::OK;
  });
}

grpc::Status WorkerServiceImpl::SetKey(grpc::ServerContext* context,
                                       const v1::SetKeyRequest* request, v1::SetKeyResponse*) {
  return Handle(ctx_, "SetKey", *context, [&] {
    return ToGrpcStatus(ctx_.manager->SetKey(request->job_id(), request->attempt(), request->key(),
                                             request->value()));
  });
}

grpc::Status WorkerServiceImpl::GetKey(grpc::ServerContext* context,
                                       const v1::GetKeyRequest* request,
                                       v1::GetKeyResponse* response) {
  return Handle(ctx_, "GetKey", *context, [&] {
    absl::StatusOr<std::optional<std::string>> value =
        ctx_.manager->GetKey(request->job_id(), request->attempt(), request->key());
    if (!value.ok()) return ToGrpcStatus(value.status());
    response->set_found(value->has_value());
    if (*value) response->set_value(**value);
    return grpc::Status::OK;
  });
}

grpc::Status WorkerServiceImpl::WaitKeys(grpc::ServerContext* context,
                                         const v1::WaitKeysRequest* request,
                                         v1::WaitKeysResponse* response) {
  return Handle(ctx_, "WaitKeys", *context, [&] {
    const absl::Time deadline = std::min(absl::Now() + FromProto(request->timeout()),
                                         absl::FromChrono(context->deadline()));
    const std::vector<std::string> keys(request->keys().begin(), request->keys().end());
    absl::StatusOr<std::map<std::string, std::string>> values =
        ctx_.manager->WaitKeys(request->job_id(), request->attempt(), keys, deadline);
    if (!values.ok()) return ToGrpcStatus(values.status());
    for (auto& [k, v] : *values) (*response->mutable_values())[k] = std::move(v);
    return grpc::Status::OK;
  });
}

}  // namespace mimo::coordinator
