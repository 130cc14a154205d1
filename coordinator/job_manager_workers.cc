// The coordinator's logic, worker side: registration, heartbeats, assignments, status, metrics,
// logs and the rendezvous key-value store.
#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "coordinator/job_manager.h"
#include "coordinator/job_state.h"
#include "coordinator/message_limits.h"
#include "coordinator/plan_proto.h"
#include "google/protobuf/util/time_util.h"

namespace mimo::coordinator {
namespace {

using google::protobuf::util::TimeUtil;

std::string KvKey(const std::string& job_id, int attempt, const std::string& key) {
  return absl::StrCat(job_id, "/", attempt, "/", key);
}

bool Finished(v1::WorkerState s) {
  return s == v1::WORKER_STATE_SUCCEEDED || s == v1::WORKER_STATE_FAILED ||
         s == v1::WORKER_STATE_STOPPED;
}

}  // namespace

std::vector<FieldViolation> JobManager::CheckEmbeddedWorkersSuffice(const v1::JobSpec& spec) const {
  const Options::EmbeddedWorkers& own = options_.embedded;
  if (own.count == 0) return {};
  const std::string ours =
      absl::StrCat("this coordinator runs its own ", own.count, " ",
                   absl::AsciiStrToUpper(DeviceKindWord(own.device)),
                   " workers (--cpu-workers/--gpu-workers) and takes no other worker");
  if (spec.resources().device() != own.device) {
    return {{"resources.device",
             absl::StrCat("a job for ",
                          absl::AsciiStrToUpper(DeviceKindWord(spec.resources().device())),
                          " workers could never start: ", ours)}};
  }
  if (spec.resources().workers() > own.count) {
    return {{"resources.workers", absl::StrCat("a job of ", spec.resources().workers(),
                                               " workers could never start: ", ours)}};
  }
  return {};
}

absl::StatusOr<std::string> JobManager::RegisterWorker(const v1::WorkerInfo& info,
                                                       const v1::RunningAssignment& resume,
                                                       absl::FunctionRef<absl::Time()> clock) {
  if (info.host().empty()) return absl::InvalidArgumentError("worker.host is empty");
  if (info.device() == v1::DEVICE_KIND_UNSPECIFIED) {
    return absl::InvalidArgumentError("worker.device is unspecified");
  }
  if (const Options::EmbeddedWorkers& own = options_.embedded;
      own.count > 0 && (info.host() != own.host || info.device() != own.device ||
                        info.local_index() < 0 || info.local_index() >= own.count)) {
    // Embedded mode counts on every worker dying with this coordinator (Recover settles their
    // jobs at once) and being its child (a drain sends it SIGTERM): another one would have its
    // job failed by a restart while it still runs it, and never be drained.
    return absl::FailedPreconditionError(absl::StrCat(
        "this coordinator runs its own ", own.count, " ",
        absl::AsciiStrToUpper(DeviceKindWord(own.device)), " workers on ", own.host,
        " (--cpu-workers/--gpu-workers) and takes no other worker (this one: ", info.host(), ", ",
        absl::AsciiStrToUpper(DeviceKindWord(info.device())), " device ", info.local_index(),
        "); start one without them to take workers from other hosts"));
  }
  absl::MutexLock lock(&mu_);
  const absl::Time now = clock();  // See Heartbeat: after a wait for the lock.
  if (embedded()) {
    // A slot is this coordinator's only while its worker is the process started for it: another
    // process on this host (a worker started by hand) is no child of ours either.
    if (const int child = slot_pids_[info.local_index()]; child <= 0 || info.pid() != child) {
      return absl::FailedPreconditionError(absl::StrCat(
          "slot ", info.local_index(), " (", absl::AsciiStrToUpper(DeviceKindWord(info.device())),
          " device ", info.local_index(), " of ", info.host(),
          ") belongs to the worker process this coordinator started for it, ",
          child > 0 ? absl::StrCat("pid ", child) : "none running now", ", and this worker is pid ",
          info.pid(), info.pid() == 0 ? " (none sent)" : "",
          ": an embedded coordinator (--cpu-workers/--gpu-workers) takes no worker started by "
          "hand (nor one that a --worker-binary script starts without exec); start one without "
          "them to take such workers"));
    }
  }
  // A device runs one worker at a time. While a worker on record holds this one (same host,
  // device kind and local index, not leaving), another registration for it is refused, so a
  // second live worker never displaces the first; the new one retries. A holder without a job
  // that missed two heartbeats is taken as gone (a live worker beats every interval, and nothing
  // is lost) and replaced at once; one with a job holds the device until its heartbeat timeout,
  // which fails that job naming it.
  std::string stale;
  for (const auto& [held_by, w] : workers_) {
    if (w.leaving || w.info.host() != info.host() || w.info.device() != info.device() ||
        w.info.local_index() != info.local_index()) {
      continue;
    }
    if (w.job_id.empty() && now - w.last_heartbeat > 2 * options_.heartbeat_interval) {
      stale = held_by;
      break;
    }
    return absl::AlreadyExistsError(absl::StrCat(
        DeviceKindWord(info.device()), " device ", info.local_index(), " of host ", info.host(),
        " is held by worker ", held_by, " (pid ", w.info.pid(), ", last heartbeat ",
        absl::FormatDuration(absl::Trunc(now - w.last_heartbeat, absl::Milliseconds(1))),
        " ago): a worker restarted for it registers once that one's heartbeat timeout (",
        absl::FormatDuration(options_.heartbeat_timeout),
        ") has passed; workers for different devices need different local indices"));
  }
  if (!stale.empty()) workers_.erase(stale);
  // Ids never repeat across coordinator restarts: a worker that kept an old id must hear
  // COMMAND_REGISTER, not another worker's commands.
  const std::string id = absl::StrCat("w-", instance_, "-", next_worker_++);
  Worker& worker = workers_[id];
  worker.info = info;
  worker.last_heartbeat = now;
  if (!resume.job_id().empty()) {
    auto it = active_.find(resume.job_id());
    const int rank = resume.rank();
    if (it == active_.end() || it->second.attempt != resume.attempt() || rank < 0 ||
        rank >= static_cast<int>(it->second.worker_of_rank.size()) ||
        !it->second.worker_of_rank[rank].empty()) {
      // Nothing waits for this worker: it must drop what it runs.
      worker.job_id = resume.job_id();
      worker.attempt = resume.attempt();
      worker.rank = rank;
      worker.has_assignment = true;
      worker.stop = true;
      worker.stop_time = now;
      worker.stop_reason = absl::StrCat("the coordinator does not expect job ", resume.job_id(),
                                        " attempt ", resume.attempt(), " rank ", rank);
    } else {
      Active& active = it->second;
      active.worker_of_rank[rank] = id;
      active.rank_state[rank] = v1::WORKER_STATE_RUNNING;
      worker.job_id = resume.job_id();
      worker.attempt = resume.attempt();
      worker.rank = rank;
      worker.has_assignment = true;
      absl::StatusOr<v1::Job> job = store_->GetJob(resume.job_id());
      if (job.ok() && job->state() == v1::JOB_STATE_CANCELLING) {
        worker.stop = true;
        worker.stop_time = now;
        worker.stop_reason = job->state_reason();
      }
      if (UnattachedRanks(active).empty()) {
        active.reattach_deadline = absl::InfiniteFuture();
        // Re-attached ranks count as running, and no report may follow soon to notice that the
        // whole job now runs.
        if (job.ok()) {
          MarkRunningWhenAllRanksRun(
              *job, active,
              absl::StrCat(RankCount(active.rank_state.size(), true),
                           " running (re-attached after a coordinator restart)"),
              now)
              .IgnoreError();
        }
      }
    }
  }
  Changed();
  Schedule(now);
  return id;
}

int64_t JobManager::num_workers() {
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(workers_.size());
}

v1::HeartbeatResponse JobManager::Heartbeat(const std::string& worker_id, bool leaving,
                                            absl::FunctionRef<absl::Time()> clock) {
  absl::MutexLock lock(&mu_);
  const absl::Time now = clock();
  v1::HeartbeatResponse response;
  auto it = workers_.find(worker_id);
  if (it == workers_.end()) {
    response.set_command(v1::HeartbeatResponse::COMMAND_REGISTER);
    response.set_reason(absl::StrCat("worker ", worker_id, " is not registered"));
    return response;
  }
  it->second.last_heartbeat = std::max(it->second.last_heartbeat, now);
  if (leaving) {
    if (it->second.job_id.empty()) {
      workers_.erase(it);
      Changed();
      response.set_command(v1::HeartbeatResponse::COMMAND_CONTINUE);
      return response;
    }
    it->second.leaving = true;
  }
  if (it->second.stop) {
    response.set_command(v1::HeartbeatResponse::COMMAND_STOP);
    response.set_reason(it->second.stop_reason);
  } else {
    response.set_command(v1::HeartbeatResponse::COMMAND_CONTINUE);
    auto active = active_.find(it->second.job_id);
    if (active != active_.end() && active->second.attempt == it->second.attempt &&
        active->second.checkpoint.sequence() > 0) {
      *response.mutable_checkpoint_request() = active->second.checkpoint;
      v1::RunningAssignment* to = response.mutable_checkpoint_request_for();
      to->set_job_id(it->second.job_id);
      to->set_attempt(it->second.attempt);
      to->set_rank(it->second.rank);
    }
  }
  return response;
}

v1::Assignment JobManager::MakeAssignment(const std::string& job_id, const Active& active, int rank,
                                          const v1::JobSpec& spec) {
  v1::Assignment a;
  a.set_job_id(job_id);
  a.set_attempt(active.attempt);
  *a.mutable_spec() = spec;
  a.set_world_size(active.plan->world_size());
  *a.mutable_rank() = RankToProto(*active.plan, rank);
  ModulesToProto(*active.plan, a.mutable_modules());
  return a;
}

absl::StatusOr<std::optional<v1::Assignment>> JobManager::WaitAssignment(
    const std::string& worker_id, absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  auto ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto it = workers_.find(worker_id);
    return shutdown_ || it == workers_.end() ||
           (!it->second.job_id.empty() && !it->second.stop && active_.contains(it->second.job_id));
  };
  mu_.AwaitWithDeadline(absl::Condition(&ready), deadline);
  auto it = workers_.find(worker_id);
  if (it == workers_.end()) {
    return absl::NotFoundError(absl::StrCat("worker ", worker_id, " is not registered"));
  }
  Worker& w = it->second;
  auto active = active_.find(w.job_id);
  if (w.job_id.empty() || w.stop || active == active_.end()) return std::nullopt;
  MIMO_ASSIGN_OR_RETURN(v1::Job job, store_->GetJob(w.job_id));
  // From here on the worker may run its rank, so ending the attempt must wait for its stop.
  w.has_assignment = true;
  return MakeAssignment(w.job_id, active->second, w.rank, job.spec());
}

absl::StatusOr<JobManager::Active*> JobManager::BoundAttempt(const std::string& worker_id,
                                                             const std::string& job_id, int attempt,
                                                             int rank) {
  auto w = workers_.find(worker_id);
  if (w == workers_.end()) {
    return absl::NotFoundError(absl::StrCat("worker ", worker_id, " is not registered"));
  }
  auto active = active_.find(job_id);
  // The rank's current holder only: a worker of an earlier schedule of the same attempt (sent
  // back to PENDING) that has not confirmed its stop yet holds nothing.
  if (w->second.job_id != job_id || w->second.attempt != attempt || w->second.rank != rank ||
      active == active_.end() || active->second.attempt != attempt || rank < 0 ||
      rank >= static_cast<int>(active->second.worker_of_rank.size()) ||
      active->second.worker_of_rank[rank] != worker_id) {
    return absl::FailedPreconditionError(absl::StrCat("worker ", worker_id, " does not run rank ",
                                                      rank, " of job ", job_id, " attempt ",
                                                      attempt));
  }
  return &active->second;
}

absl::Status JobManager::ReportStatus(const v1::ReportStatusRequest& request, absl::Time now) {
  // A worker's message becomes the job's failure message or state_reason, in every list page and
  // watch of it: bounded as a user's reason is (kMaxReasonBytes), its start kept.
  const std::string message(absl::string_view(request.message()).substr(0, kMaxReasonBytes));
  // Stored states drive the job's transitions, so only known ones are accepted.
  if (request.state() == v1::WORKER_STATE_UNSPECIFIED) {
    return absl::InvalidArgumentError("state is unspecified");
  }
  if (!v1::WorkerState_IsValid(request.state())) {
    return absl::InvalidArgumentError(
        absl::StrCat("state ", static_cast<int>(request.state()), " is not a known WorkerState"));
  }
  absl::MutexLock lock(&mu_);
  auto w = workers_.find(request.worker_id());
  if (w == workers_.end()) {
    return absl::NotFoundError(absl::StrCat("worker ", request.worker_id(), " is not registered"));
  }
  const bool finished = Finished(request.state());
  absl::StatusOr<Active*> active =
      BoundAttempt(request.worker_id(), request.job_id(), request.attempt(), request.rank());
  if (!active.ok()) {
    // A worker of an attempt that already ended confirms it stopped: it is free again.
    if (finished && w->second.job_id == request.job_id() &&
        w->second.attempt == request.attempt()) {
      w->second = Worker{.info = w->second.info,
                         .last_heartbeat = std::max(w->second.last_heartbeat, now),
                         .leaving = request.leaving()};
      Changed();
      Schedule(now);
      return absl::OkStatus();
    }
    return active.status();
  }
  (*active)->rank_state[request.rank()] = request.state();
  const bool told_to_stop = w->second.stop;
  if (finished) {
    w->second = Worker{.info = w->second.info,
                       .last_heartbeat = std::max(w->second.last_heartbeat, now),
                       .leaving = request.leaving()};
  }
  Changed();
  // Shutting down, the coordinator stops its own workers: their reports change no job (the next
  // start's Recover decides, as for workers that outlive the coordinator). Unavailable, so that a
  // final report is kept and sent again to the next coordinator.
  if (shutdown_) return absl::UnavailableError("the coordinator is shutting down");
  MIMO_ASSIGN_OR_RETURN(v1::Job job, store_->GetJob(request.job_id()));
  // A stop of the drain that is not a checkpoint's (a job without checkpoints aborted, a rank
  // that failed as its peers stopped): the job is left to the next start's Recover, like one
  // whose workers a crash took. Except a cancelled job's: its ranks were told to stop before the
  // drain, and the user waits for it to end, so once they have all confirmed it is CANCELLED now,
  // as without the drain (nothing else is decided: it fails no job and schedules none).
  if (draining_ && !request.stopped_after_checkpoint() &&
      request.state() != v1::WORKER_STATE_SUCCEEDED && finished) {
    if (job.state() == v1::JOB_STATE_CANCELLING) SettleCancelling(job, now);
    return absl::OkStatus();
  }
  if (request.state() == v1::WORKER_STATE_SUCCEEDED && !IsTerminal(job.state()) &&
      std::find(job.succeeded_ranks().begin(), job.succeeded_ranks().end(), request.rank()) ==
          job.succeeded_ranks().end()) {
    // Stored: the rank's worker is free now, and a coordinator restarting before the job ends
    // must not wait for it to re-attach.
    job.add_succeeded_ranks(request.rank());
    MIMO_RETURN_IF_ERROR(store_->SaveJob(job));
  }
  const auto& states = (*active)->rank_state;
  // A rank that failed, or stopped without being told to (its worker was shut down), ends the
  // attempt at once: its peers would otherwise wait for it until their collectives time out.
  // A rank that stopped after a checkpoint did so for the job's stop request, or else because a
  // worker of the job was drained (SIGTERM): the attempt then restarts from that checkpoint.
  const bool after_checkpoint =
      request.state() == v1::WORKER_STATE_STOPPED && request.stopped_after_checkpoint();
  const bool stopped_as_asked = after_checkpoint && (*active)->checkpoint.stop();
  const bool drained = after_checkpoint && !(*active)->checkpoint.stop();
  const bool unasked_stop =
      request.state() == v1::WORKER_STATE_STOPPED && !told_to_stop && !after_checkpoint;
  if ((request.state() == v1::WORKER_STATE_FAILED || unasked_stop) &&
      job.state() != v1::JOB_STATE_CANCELLING) {
    v1::Failure failure;
    failure.set_reason(unasked_stop ? "WORKER_STOPPED" : "WORKER_FAILED");
    failure.set_message(
        absl::StrCat("rank ", request.rank(),
                     unasked_stop ? " stopped before the job ended"
                                  : absl::StrCat(" failed (exit code ", request.exit_code(), ")"),
                     message.empty() ? "" : ": ", message));
    failure.set_exit_code(request.exit_code());
    failure.set_rank(request.rank());
    MIMO_RETURN_IF_ERROR(FailAttempt(job, failure, Retry::kIfAllowed, now));
    Schedule(now);  // Ranks that never fetched their assignment are free again.
    return absl::OkStatus();
  }
  if (drained && request.rank() == 0 &&
      (job.state() == v1::JOB_STATE_RUNNING || job.state() == v1::JOB_STATE_SCHEDULED)) {
    // Rank 0 reports last of a save, once the checkpoint is committed.
    v1::Failure failure;
    failure.set_reason("PREEMPTED");
    failure.set_message(message);
    failure.set_rank(request.rank());
    MIMO_RETURN_IF_ERROR(FailAttempt(job, failure, Retry::kPreempted, now));
    Schedule(now);
    return absl::OkStatus();
  }
  if (stopped_as_asked && request.rank() == 0 && job.state() == v1::JOB_STATE_RUNNING) {
    // Rank 0 stops last of a save: after committing the checkpoint. The others have stopped
    // or are about to; those that do not within cancel_grace are told to.
    const std::string& reason = job.checkpoint_request().reason();
    MIMO_RETURN_IF_ERROR(Transition(
        job, v1::JOB_STATE_CANCELLING,
        absl::StrCat(message.empty() ? "stopped after a checkpoint as requested" : message,
                     reason.empty() ? "" : ": ", reason),
        now));
    (*active)->cancel_deadline = now + options_.cancel_grace;
  }
  MIMO_RETURN_IF_ERROR(MarkRunningWhenAllRanksRun(
      job, **active, absl::StrCat(RankCount(states.size(), true), " running"), now));
  if (job.state() == v1::JOB_STATE_RUNNING && AllSucceeded(**active)) {
    return Succeed(job, now);
  }
  // This job only: during a drain no other may be failed (CheckActiveJobs would check deadlines).
  if (job.state() == v1::JOB_STATE_CANCELLING) SettleCancelling(job, now);
  Schedule(now);
  return absl::OkStatus();
}

absl::Status JobManager::Succeed(v1::Job& job, absl::Time now) {
  const size_t world = active_.at(job.id()).rank_state.size();
  v1::Progress* progress = job.mutable_progress();
  progress->set_step(job.spec().training().steps());
  progress->set_total_steps(job.spec().training().steps());
  progress->set_percent(100);
  progress->clear_eta();
  // Stored first: if the store fails, the attempt stays active and the next report or tick
  // tries again.
  MIMO_RETURN_IF_ERROR(Transition(job, v1::JOB_STATE_SUCCEEDED,
                                  absl::StrCat(RankCount(world, true), " succeeded"), now));
  active_.erase(job.id());
  const std::string prefix = absl::StrCat(job.id(), "/");
  kv_.erase(kv_.lower_bound(prefix), kv_.lower_bound(prefix + '\xff'));
  Schedule(now);
  return absl::OkStatus();
}

absl::Status JobManager::ReportMetrics(const v1::ReportMetricsRequest& request, absl::Time now) {
  absl::MutexLock lock(&mu_);
  MIMO_ASSIGN_OR_RETURN(Active * active, BoundAttempt(request.worker_id(), request.job_id(),
                                                      request.attempt(), request.rank()));
  MIMO_ASSIGN_OR_RETURN(v1::Job job, store_->GetJob(request.job_id()));
  const v1::Metrics& m = request.metrics();
  // Every rank may report; a step already recorded is not recorded twice.
  if (job.has_last_metrics() && m.step() <= job.last_metrics().step()) return absl::OkStatus();
  *job.mutable_last_metrics() = m;
  if (!job.last_metrics().has_time()) {
    *job.mutable_last_metrics()->mutable_time() =
        TimeUtil::NanosecondsToTimestamp(absl::ToUnixNanos(now));
  }
  const int64_t total = job.spec().training().steps();
  v1::Progress* progress = job.mutable_progress();
  progress->set_step(m.step());
  progress->set_total_steps(total);
  progress->set_percent(total > 0 ? 100.0 * static_cast<double>(m.step()) / total : 0);
  if (!active->first_metrics) active->first_metrics = {now, m.step()};
  const auto [t0, s0] = *active->first_metrics;
  if (m.step() > s0 && now > t0 && total > m.step()) {
    const absl::Duration per_step = (now - t0) / static_cast<double>(m.step() - s0);
    const absl::Duration eta = per_step * static_cast<double>(total - m.step());
    *progress->mutable_eta() = TimeUtil::NanosecondsToDuration(absl::ToInt64Nanoseconds(eta));
  }
  *job.mutable_update_time() = TimeUtil::NanosecondsToTimestamp(absl::ToUnixNanos(now));
  v1::JobEvent event;
  *event.mutable_metrics() = job.last_metrics();
  *event.mutable_time() = job.update_time();
  MIMO_RETURN_IF_ERROR(store_->UpdateJob(job, std::move(event)).status());
  Changed();
  return absl::OkStatus();
}

absl::Status JobManager::ReportLogs(const std::string& worker_id, const std::string& job_id,
                                    int attempt, int rank, const std::vector<std::string>& lines,
                                    absl::Time now) {
  absl::MutexLock lock(&mu_);
  auto w = workers_.find(worker_id);
  if (w == workers_.end() || w->second.job_id != job_id || w->second.attempt != attempt ||
      w->second.rank != rank) {
    return absl::FailedPreconditionError(absl::StrCat("worker ", worker_id, " does not run rank ",
                                                      rank, " of job ", job_id, " attempt ",
                                                      attempt));
  }
  MIMO_RETURN_IF_ERROR(store_->AppendLogs(job_id, attempt, rank, lines, now));
  Changed();
  return absl::OkStatus();
}

absl::Status JobManager::SetKey(const std::string& job_id, int attempt, const std::string& key,
                                std::string value) {
  absl::MutexLock lock(&mu_);
  auto it = active_.find(job_id);
  if (it == active_.end() || it->second.attempt != attempt) {
    return absl::FailedPreconditionError(
        absl::StrCat("job ", job_id, " attempt ", attempt, " is not running"));
  }
  kv_[KvKey(job_id, attempt, key)] = std::move(value);
  Changed();
  return absl::OkStatus();
}

absl::StatusOr<std::optional<std::string>> JobManager::GetKey(const std::string& job_id,
                                                              int attempt, const std::string& key) {
  absl::MutexLock lock(&mu_);
  auto it = kv_.find(KvKey(job_id, attempt, key));
  if (it == kv_.end()) return std::nullopt;
  return it->second;
}

absl::StatusOr<std::map<std::string, std::string>> JobManager::WaitKeys(
    const std::string& job_id, int attempt, const std::vector<std::string>& keys,
    absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  auto missing = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    std::vector<std::string> out;
    for (const std::string& k : keys) {
      if (!kv_.contains(KvKey(job_id, attempt, k))) out.push_back(k);
    }
    return out;
  };
  auto done = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return shutdown_ || missing().empty(); };
  mu_.AwaitWithDeadline(absl::Condition(&done), deadline);
  // Checked first: a wait cut short by the shutdown did not run out of time.
  if (shutdown_) return absl::UnavailableError("coordinator shutting down");
  if (const std::vector<std::string> left = missing(); !left.empty()) {
    return absl::DeadlineExceededError(
        absl::StrCat("keys not set in time: ", absl::StrJoin(left, ", ")));
  }
  std::map<std::string, std::string> values;
  for (const std::string& k : keys) values[k] = kv_.at(KvKey(job_id, attempt, k));
  return values;
}

}  // namespace mimo::coordinator
