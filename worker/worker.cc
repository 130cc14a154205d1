// The worker's main loop: register, heartbeat, take assignments and run them, one at a time.
#include "worker/worker.h"

#include <algorithm>
#include <cstdio>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "comm/process_groups.h"
#ifdef MIMO_WORKER_HAVE_NCCL
#include "comm/cuda_buffer_space.h"
#endif
#ifdef MIMO_WORKER_HAVE_CUDA
#include "kernels/cuda_ops.h"
#endif
#include "common/status_macros.h"
#include "google/protobuf/util/time_util.h"
#include "worker/coordinator_store.h"
#include "worker/group_specs.h"
#include "worker/metrics_sender.h"
#include "worker/selftest.h"
#include "worker/train_job.h"

namespace mimo::worker {
namespace {

using google::protobuf::util::TimeUtil;

// The exit code a FAILED report carries: the job failed, the worker itself goes on.
constexpr int kJobFailedExitCode = 1;

// The heartbeat settings used when a coordinator leaves them unset.
constexpr absl::Duration kDefaultHeartbeatInterval = absl::Seconds(2);
constexpr absl::Duration kDefaultHeartbeatTimeout = absl::Seconds(10);

// The sequence of a drained worker's own checkpoint request (Worker::Drain).
constexpr int64_t kDrainSequence = int64_t{1} << 40;

// How often a final status report is retried while the coordinator cannot be reached.
constexpr absl::Duration kReportRetryInterval = absl::Milliseconds(100);

absl::Duration FromProto(const google::protobuf::Duration& d) {
  return absl::Nanoseconds(TimeUtil::DurationToNanoseconds(d));
}

// The worker's own messages (not a job's), to stderr.
void Say(const std::string& text) {
  const std::string line = absl::StrCat("mimo-worker: ", text, "\n");
  std::fwrite(line.data(), 1, line.size(), stderr);
}

bool Final(v1::WorkerState state) {
  return state == v1::WORKER_STATE_SUCCEEDED || state == v1::WORKER_STATE_FAILED ||
         state == v1::WORKER_STATE_STOPPED;
}

bool Transient(const absl::Status& status) {
  return absl::IsUnavailable(status) || absl::IsDeadlineExceeded(status);
}

std::string DescribeGroups(const std::vector<comm::GroupSpec>& groups) {
  std::vector<std::string> parts;
  for (const comm::GroupSpec& g : groups) {
    parts.push_back(absl::StrCat(g.kind, " [", absl::StrJoin(g.members, ","), "]"));
  }
  return absl::StrJoin(parts, ", ");
}

}  // namespace

// One assignment while it runs: what the heartbeat thread needs to stop it.
struct Worker::RunningJob {
  v1::RunningAssignment id;
  // The rendezvous calls of the job, cancelled when it is stopped.
  CallCanceller store_calls;

  absl::Mutex mu;
  bool stopped ABSL_GUARDED_BY(mu) = false;
  std::string stop_reason ABSL_GUARDED_BY(mu);
  // A KIND_TRAIN job with checkpointing.dir: Drain() can ask it to save and stop.
  bool saves_checkpoints = false;
  v1::CheckpointRequest checkpoint ABSL_GUARDED_BY(mu);
  bool ended_after_checkpoint ABSL_GUARDED_BY(mu) = false;
  // Set once connected; cleared (under `mu`) before being destroyed.
  std::unique_ptr<comm::ProcessGroups> groups ABSL_GUARDED_BY(mu);

  // Makes blocked and later communication fail soon. Idempotent; thread-safe.
  void Abort(const std::string& reason) {
    {
      absl::MutexLock lock(&mu);
      if (!stopped) {
        stopped = true;
        stop_reason = reason;
      }
      if (groups) groups->AbortAll();
    }
    store_calls.Cancel();
  }

  // Marks the job stopped (with `reason`) without aborting anything: it ended on its own, early,
  // as a checkpoint request asked.
  void EndAfterCheckpoint(const std::string& reason) {
    absl::MutexLock lock(&mu);
    if (!stopped) {
      stopped = true;
      stop_reason = reason;
      ended_after_checkpoint = true;
    }
  }
  // Whether it ended so (rather than being stopped).
  bool EndedAfterCheckpoint() {
    absl::MutexLock lock(&mu);
    return ended_after_checkpoint;
  }

  // This worker is being taken away: a request of its own to save and stop, newer than any the
  // coordinator sends (their sequences count from 1).
  void NoteDrain(const std::string& reason) {
    absl::MutexLock lock(&mu);
    checkpoint.set_sequence(kDrainSequence);
    checkpoint.set_stop(true);
    checkpoint.set_reason(reason);
  }

  // The newest checkpoint request the coordinator sent for this job attempt (stop is sticky).
  void NoteCheckpointRequest(const v1::CheckpointRequest& request,
                             const v1::RunningAssignment& to) {
    if (to.job_id() != id.job_id() || to.attempt() != id.attempt()) return;  // A stale answer.
    absl::MutexLock lock(&mu);
    if (request.sequence() > checkpoint.sequence()) checkpoint = request;
    if (request.stop()) checkpoint.set_stop(true);
  }
  v1::CheckpointRequest checkpoint_request() {
    absl::MutexLock lock(&mu);
    return checkpoint;
  }

  // Whether the job was stopped, and why.
  bool Stopped(std::string* reason) {
    absl::MutexLock lock(&mu);
    if (reason != nullptr) *reason = stop_reason;
    return stopped;
  }
};

int ExitCodeFor(const absl::Status& status) {
  if (status.ok()) return kExitStopped;
  if (absl::IsUnavailable(status)) return kExitUnreachable;
  return kExitError;
}

Worker::Worker(WorkerOptions options) : options_(std::move(options)) {}

Worker::~Worker() {
  if (heartbeat_.joinable()) heartbeat_.join();
}

std::string Worker::worker_id() const {
  absl::MutexLock lock(&mu_);
  return registration_.worker_id;
}

Worker::Registration Worker::registration() const {
  absl::MutexLock lock(&mu_);
  return registration_;
}

bool Worker::stopping() const {
  absl::MutexLock lock(&mu_);
  return stopping_;
}

std::shared_ptr<Worker::RunningJob> Worker::BeginStopping() {
  std::shared_ptr<RunningJob> job;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    job = job_;
  }
  poll_canceller_.Cancel();
  return job;
}

void Worker::Stop(const std::string& reason) {
  if (std::shared_ptr<RunningJob> job = BeginStopping()) job->Abort(reason);
}

void Worker::Drain(const std::string& reason) {
  std::shared_ptr<RunningJob> job = BeginStopping();
  if (!job) return;
  if (!job->saves_checkpoints) {
    job->Abort(reason);
    return;
  }
  Say(absl::StrCat(reason, ": job ", job->id.job_id(),
                   " saves a checkpoint after its current step, then stops"));
  job->NoteDrain(reason);
}

void Worker::Fail(const absl::Status& status) {
  std::shared_ptr<RunningJob> job;
  {
    absl::MutexLock lock(&mu_);
    if (!fatal_.ok()) return;
    fatal_ = status;
    stopping_ = true;
    job = job_;
  }
  Say(std::string(status.message()));
  poll_canceller_.Cancel();
  if (job) job->Abort(std::string(status.message()));
}

void Worker::AbortJob(const std::string& reason) {
  std::shared_ptr<RunningJob> job;
  std::optional<v1::ReportStatusRequest> last;
  {
    absl::MutexLock lock(&mu_);
    job = job_;
    last = last_final_;
  }
  if (job) {
    if (!job->Stopped(nullptr)) Say(absl::StrCat("stopping job ", job->id.job_id(), ": ", reason));
    job->Abort(reason);
    return;
  }
  // Told to stop with no job running: the coordinator still waits for the last job's final
  // report, whose first send must have been lost.
  if (last) {
    last->set_worker_id(registration().worker_id);
    client_->ReportStatus(*last).IgnoreError();
  }
}

absl::Status Worker::RegisterNow(const v1::RunningAssignment& resume) {
  MIMO_ASSIGN_OR_RETURN(v1::RegisterWorkerResponse response, client_->Register(info_, resume));
  absl::Duration interval = FromProto(response.heartbeat_interval());
  absl::Duration timeout = FromProto(response.heartbeat_timeout());
  if (interval <= absl::ZeroDuration()) interval = kDefaultHeartbeatInterval;
  if (timeout <= absl::ZeroDuration()) timeout = kDefaultHeartbeatTimeout;
  const absl::Duration lost_after = std::max(timeout, FromProto(response.reattach_grace()));
  {
    absl::MutexLock lock(&mu_);
    registration_ = {response.worker_id(), interval, timeout, lost_after};
    last_contact_ = absl::Now();
  }
  Say(absl::StrCat("registered with the coordinator at ", options_.coordinator.address, " as ",
                   response.worker_id(), " (", info_.host(), ", slot ", info_.local_index(),
                   resume.job_id().empty()
                       ? std::string()
                       : absl::StrCat(", resuming job ", resume.job_id(), " attempt ",
                                      resume.attempt(), " rank ", resume.rank()),
                   "; heartbeat every ", absl::FormatDuration(interval), ", timeout ",
                   absl::FormatDuration(timeout), ")"));
  return absl::OkStatus();
}

absl::Status Worker::Run() {
  {
    absl::MutexLock lock(&mu_);
    if (running_) return absl::FailedPreconditionError("Worker::Run is already running");
    running_ = true;
  }
  MIMO_ASSIGN_OR_RETURN(client_, CoordinatorClient::Create(options_.coordinator));
  MIMO_ASSIGN_OR_RETURN(info_,
                        LocalWorkerInfo(options_.host, options_.local_index, options_.device));
  if (stopping()) return absl::OkStatus();
  MIMO_RETURN_IF_ERROR(client_->WaitForConnection(options_.connect_timeout));
  // AlreadyExists: the coordinator still holds this device for another worker (this one's
  // predecessor, dead but not yet timed out, or a live duplicate). Retried every second; said once.
  absl::Status registered = RegisterNow({});
  for (bool said = false; absl::IsAlreadyExists(registered) && !stopping(); said = true) {
    if (!said) Say(absl::StrCat("waiting to register: ", registered.message()));
    {
      absl::MutexLock lock(&mu_);
      mu_.AwaitWithTimeout(absl::Condition(&stopping_), absl::Seconds(1));
    }
    registered = RegisterNow({});
  }
  if (stopping() && !registered.ok()) return absl::OkStatus();
  MIMO_RETURN_IF_ERROR(registered);
  heartbeat_ = std::thread([this] { HeartbeatLoop(); });

  while (!stopping()) {
    const Registration reg = registration();
    absl::StatusOr<std::optional<v1::Assignment>> assignment =
        client_->WaitAssignment(reg.worker_id, options_.assignment_wait, &poll_canceller_);
    if (!assignment.ok()) {
      if (stopping()) break;
      // NotFound: the coordinator forgot this worker (it restarted); the heartbeat thread
      // registers again. Otherwise it is unreachable, which the heartbeat thread judges.
      absl::MutexLock lock(&mu_);
      mu_.AwaitWithTimeout(absl::Condition(&stopping_), reg.heartbeat_interval);
      continue;
    }
    if (*assignment) RunAssignment(**assignment);
  }

  {
    absl::MutexLock lock(&mu_);
    heartbeat_done_ = true;
  }
  if (heartbeat_.joinable()) heartbeat_.join();
  absl::Status fatal;
  {
    absl::MutexLock lock(&mu_);
    fatal = fatal_;
  }
  if (fatal.ok()) {
    // No job runs any more: the coordinator gives this worker no further rank.
    const Registration reg = registration();
    client_
        ->Heartbeat(reg.worker_id,
                    std::min(options_.coordinator.call_timeout, reg.heartbeat_timeout),
                    /*leaving=*/true)
        .IgnoreError();
  }
  return fatal;
}

void Worker::HeartbeatLoop() {
  while (true) {
    const Registration reg = registration();
    {
      absl::MutexLock lock(&mu_);
      if (mu_.AwaitWithTimeout(absl::Condition(&heartbeat_done_), reg.heartbeat_interval)) return;
    }
    const absl::StatusOr<v1::HeartbeatResponse> response = client_->Heartbeat(
        reg.worker_id, std::min(options_.coordinator.call_timeout, reg.heartbeat_timeout));
    if (response.ok()) {
      {
        absl::MutexLock lock(&mu_);
        last_contact_ = absl::Now();
      }
      OnHeartbeat(*response);
      continue;
    }
    absl::Duration silent;
    {
      absl::MutexLock lock(&mu_);
      silent = absl::Now() - last_contact_;
    }
    if (silent > reg.lost_after) {
      // Neither a restarted coordinator (past its reattach grace) nor one that stayed up (past
      // its heartbeat timeout) still counts on this worker: whatever it runs is void.
      Fail(absl::UnavailableError(
          absl::StrCat("lost the coordinator at ", options_.coordinator.address, ": no answer for ",
                       absl::FormatDuration(absl::Trunc(silent, absl::Milliseconds(1))),
                       " (its heartbeat timeout is ", absl::FormatDuration(reg.heartbeat_timeout),
                       "; this worker waits ", absl::FormatDuration(reg.lost_after),
                       ", the longer of it and the reattach grace",
                       "); last error: ", response.status().message())));
      // Keep going until Run() ends: a final report in flight may still get through.
    }
  }
}

void Worker::OnHeartbeat(const v1::HeartbeatResponse& response) {
  switch (response.command()) {
    case v1::HeartbeatResponse::COMMAND_STOP:
      AbortJob(response.reason().empty() ? "the coordinator said stop" : response.reason());
      break;
    case v1::HeartbeatResponse::COMMAND_REGISTER: {
      v1::RunningAssignment resume;
      {
        absl::MutexLock lock(&mu_);
        if (job_) resume = job_->id;
        // Leaving with no job: registering again would offer the coordinator a worker that is
        // about to exit.
        if (!job_ && stopping_) break;
      }
      Say(absl::StrCat("the coordinator asks to register again (", response.reason(), ")"));
      if (absl::Status s = RegisterNow(resume); !s.ok()) {
        Say(absl::StrCat("registering again failed (retrying with the next heartbeat): ",
                         s.message()));
      }
      break;
    }
    case v1::HeartbeatResponse::COMMAND_CONTINUE:
      if (response.has_checkpoint_request()) {
        std::shared_ptr<RunningJob> job;
        {
          absl::MutexLock lock(&mu_);
          job = job_;
        }
        if (job) {
          job->NoteCheckpointRequest(response.checkpoint_request(),
                                     response.checkpoint_request_for());
        }
      }
      break;
    default:
      break;
  }
}

void Worker::AskWhetherStopped() {
  const Registration reg = registration();
  const absl::StatusOr<v1::HeartbeatResponse> response = client_->Heartbeat(
      reg.worker_id, std::min(options_.coordinator.call_timeout, reg.heartbeat_timeout));
  if (!response.ok()) return;
  {
    absl::MutexLock lock(&mu_);
    last_contact_ = absl::Now();
  }
  if (response->command() == v1::HeartbeatResponse::COMMAND_STOP) OnHeartbeat(*response);
}

absl::Status Worker::Report(const v1::Assignment& assignment, v1::WorkerState state, int exit_code,
                            const std::string& message, bool stopped_after_checkpoint) {
  v1::ReportStatusRequest request;
  request.set_job_id(assignment.job_id());
  request.set_attempt(assignment.attempt());
  request.set_rank(assignment.rank().rank());
  request.set_state(state);
  request.set_exit_code(exit_code);
  request.set_message(message);
  request.set_stopped_after_checkpoint(stopped_after_checkpoint);
  const bool final_state = Final(state);
  request.set_leaving(final_state && stopping());
  const absl::Time give_up = absl::Now() + registration().lost_after;
  absl::Status status;
  while (true) {
    request.set_worker_id(registration().worker_id);
    status = client_->ReportStatus(request);
    if (status.ok() || !final_state || !Transient(status) || absl::Now() > give_up) break;
    {
      absl::MutexLock lock(&mu_);
      if (!fatal_.ok()) break;
    }
    absl::SleepFor(kReportRetryInterval);
  }
  if (final_state) {
    absl::MutexLock lock(&mu_);
    last_final_ = request;
  }
  if (!status.ok()) {
    Say(absl::StrCat("reporting ", v1::WorkerState_Name(state), " for job ", assignment.job_id(),
                     " failed: ", status.message()));
  }
  return status;
}

void Worker::RunAssignment(const v1::Assignment& assignment) {
  const v1::RankAssignment& rank = assignment.rank();
  auto job = std::make_shared<RunningJob>();
  job->saves_checkpoints = assignment.spec().kind() == v1::JobSpec::KIND_TRAIN &&
                           !assignment.spec().checkpointing().dir().empty();
  job->id.set_job_id(assignment.job_id());
  job->id.set_attempt(assignment.attempt());
  job->id.set_rank(rank.rank());
  bool stop_now = false;
  {
    absl::MutexLock lock(&mu_);
    job_ = job;
    stop_now = stopping_;  // Stop() came between the poll and here, and found no job to stop.
  }
  if (stop_now) job->Abort("the worker is stopping");

  JobLog log(
      client_.get(), [this] { return registration().worker_id; }, assignment.job_id(),
      assignment.attempt(), rank.rank(), options_.log);
  log.Line(absl::StrCat("job ", assignment.job_id(), " attempt ", assignment.attempt(), ": rank ",
                        rank.rank(), " of ", assignment.world_size(), " (module ", rank.module(),
                        ") on worker ", registration().worker_id, " (", info_.host(), ", slot ",
                        info_.local_index(), ")"));
  Report(assignment, v1::WORKER_STATE_STARTING, 0, "").IgnoreError();

  const absl::Status status = Execute(assignment, *job, log);
  if (!status.ok() && !job->Stopped(nullptr)) AskWhetherStopped();

  std::string stop_reason;
  v1::WorkerState state;
  int exit_code = 0;
  std::string message;
  if (job->Stopped(&stop_reason)) {
    state = v1::WORKER_STATE_STOPPED;
    message = stop_reason;
    log.Line(absl::StrCat("job stopped: ", stop_reason));
  } else if (status.ok()) {
    state = v1::WORKER_STATE_SUCCEEDED;
    log.Line("job succeeded");
  } else {
    state = v1::WORKER_STATE_FAILED;
    exit_code = kJobFailedExitCode;
    message = std::string(status.message());
    log.Line(absl::StrCat("job failed: ", message));
  }
  // The coordinator refuses a rank's lines once its final state is in.
  log.Close().IgnoreError();
  Report(assignment, state, exit_code, message, job->EndedAfterCheckpoint()).IgnoreError();

  // The groups go only after the final report, so that peers blocked in a collective with this
  // rank learn why from the coordinator's STOP rather than failing on a closed connection first.
  std::unique_ptr<comm::ProcessGroups> groups;
  {
    absl::MutexLock lock(&job->mu);
    groups = std::move(job->groups);
  }
  groups.reset();
  absl::MutexLock lock(&mu_);
  job_.reset();
}

absl::Status Worker::Execute(const v1::Assignment& assignment, RunningJob& job, JobLog& log) {
  const v1::JobSpec& spec = assignment.spec();
  const bool cuda = options_.device == v1::DEVICE_KIND_CUDA;
  if (spec.resources().device() != options_.device) {
    return absl::FailedPreconditionError(
        absl::StrCat("the job runs on ", v1::DeviceKind_Name(spec.resources().device()),
                     " but this worker offers ", v1::DeviceKind_Name(options_.device)));
  }
  switch (spec.kind()) {
    case v1::JobSpec::KIND_SELFTEST:
      break;
    case v1::JobSpec::KIND_TRAIN:
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("job kind ", v1::JobSpec::Kind_Name(spec.kind()), " is not supported"));
  }

  MIMO_ASSIGN_OR_RETURN(std::vector<comm::GroupSpec> specs, spec.kind() == v1::JobSpec::KIND_TRAIN
                                                                ? TrainingGroupSpecs(assignment)
                                                                : GroupSpecsOf(assignment.rank()));
  log.Line(absl::StrCat("connecting ", specs.size(), " process groups (", cuda ? "NCCL" : "Gloo",
                        "): ", DescribeGroups(specs)));
  const absl::Time start = absl::Now();
  CoordinatorStore store(client_.get(), assignment.job_id(), assignment.attempt(),
                         &job.store_calls);
  comm::ProcessGroupsOptions group_options;
  group_options.rank = assignment.rank().rank();
  group_options.timeout = options_.comm_timeout;
  group_options.hostname = options_.listen_address;
  // Where the communicators' buffers live: host memory (null) for Gloo.
  std::unique_ptr<comm::BufferSpace> space;
  absl::StatusOr<std::unique_ptr<comm::ProcessGroups>> created;
#ifdef MIMO_WORKER_HAVE_NCCL
  if (cuda) {
    // The worker's slot is its GPU's runtime ordinal (GPUs 0..N-1 of the host).
    group_options.cuda_device = options_.local_index;
    space = std::make_unique<comm::CudaBufferSpace>(options_.local_index);
    created = comm::ProcessGroups::CreateNccl(specs, store, group_options);
  } else {
    created = comm::ProcessGroups::CreateGloo(specs, store, group_options);
  }
#else
  created = comm::ProcessGroups::CreateGloo(specs, store, group_options);
#endif
  if (!created.ok()) {
    return absl::Status(created.status().code(), absl::StrCat("connecting the process groups: ",
                                                              created.status().message()));
  }
  comm::ProcessGroups* groups = created->get();
  {
    absl::MutexLock lock(&job.mu);
    if (job.stopped) groups->AbortAll();  // Stopped while connecting.
    job.groups = *std::move(created);
  }
  log.Line(
      absl::StrCat("process groups connected in ",
                   absl::FormatDuration(absl::Trunc(absl::Now() - start, absl::Milliseconds(1)))));
  Report(assignment, v1::WORKER_STATE_RUNNING, 0, "").IgnoreError();

  if (spec.kind() == v1::JobSpec::KIND_SELFTEST) {
    return RunSelftest(
        assignment, *groups, space.get(), [&log](const std::string& line) { log.Line(line); },
        [&job] { return job.Stopped(nullptr); });
  }
  std::unique_ptr<kernels::Ops> ops;
  if (cuda) {
#ifdef MIMO_WORKER_HAVE_CUDA
    MIMO_ASSIGN_OR_RETURN(ops,
                          kernels::NewCudaOps({.device = options_.local_index,
                                               .deterministic = spec.training().deterministic()}));
#else
    return absl::FailedPreconditionError("this worker was built without CUDA");
#endif
  } else {
    ops = kernels::NewCpuOps();
  }
  // Metrics are progress, not state: sent from a thread of their own (a slow coordinator never
  // holds up a step), a lost report is logged and training goes on.
  MetricsSender metrics(
      [this](const v1::ReportMetricsRequest& request) { return client_->ReportMetrics(request); },
      [&log](const absl::Status& s) {
        log.Line(absl::StrCat("metrics report failed: ", s.message()));
      });
  const TrainJobHooks hooks{.log = [&log](const std::string& line) { log.Line(line); },
                            .report =
                                [&](const v1::Metrics& m) {
                                  v1::ReportMetricsRequest request;
                                  request.set_worker_id(registration().worker_id);
                                  request.set_job_id(assignment.job_id());
                                  request.set_attempt(assignment.attempt());
                                  request.set_rank(assignment.rank().rank());
                                  *request.mutable_metrics() = m;
                                  metrics.Post(std::move(request));
                                },
                            .stopped = [&job] { return job.Stopped(nullptr); },
                            .checkpoint_request = [&job] { return job.checkpoint_request(); },
                            .store = &store,
                            .store_timeout = options_.comm_timeout};
  MIMO_ASSIGN_OR_RETURN(
      const TrainingEnd end,
      RunTraining(assignment, *groups, *ops, cuda, info_.device_name(), info_.host(), hooks));
  if (end.iteration < spec.training().steps()) {
    const v1::CheckpointRequest asked = job.checkpoint_request();
    job.EndAfterCheckpoint(absl::StrCat(
        "stopped after saving checkpoint ", end.checkpoint, " as requested",
        asked.sequence() >= kDrainSequence ? absl::StrCat(" (", asked.reason(), ")") : ""));
  }
  return absl::OkStatus();
}

}  // namespace mimo::worker
