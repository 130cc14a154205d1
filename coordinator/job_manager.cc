// The coordinator's logic: job lifecycle, scheduling, liveness and grace periods.
#include "coordinator/job_manager.h"

#include <algorithm>
#include <iostream>
#include <optional>
#include <tuple>

#include "absl/random/random.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "coordinator/job_scheduling.h"
#include "coordinator/job_state.h"
#include "google/protobuf/util/time_util.h"

namespace mimo::coordinator {
namespace {

using google::protobuf::util::TimeUtil;

google::protobuf::Timestamp ToProto(absl::Time t) {
  return TimeUtil::NanosecondsToTimestamp(absl::ToUnixNanos(t));
}

absl::Time FromProto(const google::protobuf::Timestamp& t) {
  return absl::FromUnixNanos(TimeUtil::TimestampToNanoseconds(t));
}

v1::Failure MakeFailure(std::string reason, std::string message, int exit_code, int rank) {
  v1::Failure f;
  f.set_reason(std::move(reason));
  f.set_message(std::move(message));
  f.set_exit_code(exit_code);
  f.set_rank(rank);
  return f;
}

// The job's active deadline when it has one and has run past it, counting from its first start.
std::optional<absl::Duration> PastActiveDeadline(const v1::Job& job, absl::Time now) {
  const v1::JobSpec& spec = job.spec();
  if (!spec.has_active_deadline() || !job.has_start_time()) return std::nullopt;
  const absl::Duration limit = absl::Seconds(spec.active_deadline().seconds()) +
                               absl::Nanoseconds(spec.active_deadline().nanos());
  if (now - FromProto(job.start_time()) <= limit) return std::nullopt;
  return limit;
}

v1::Failure DeadlineFailure(absl::Duration limit) {
  return MakeFailure(
      "DEADLINE_EXCEEDED",
      absl::StrCat("the job ran longer than its active deadline of ", absl::FormatDuration(limit)),
      0, -1);
}

// Six random base-36 characters.
std::string RandomTag() {
  static constexpr char kDigits[] = "0123456789abcdefghijklmnopqrstuvwxyz";
  absl::BitGen gen;
  std::string tag(6, '0');
  for (char& c : tag) c = kDigits[absl::Uniform(gen, 0, 36)];
  return tag;
}

}  // namespace

JobManager::JobManager(JobStore* store, Options options)
    : store_(store),
      options_(options),
      instance_(RandomTag()),
      slot_pids_(std::max(options_.embedded.count, 0), 0) {}

absl::Status JobManager::Recover(absl::Time now) {
  absl::MutexLock lock(&mu_);
  MIMO_ASSIGN_OR_RETURN(std::vector<v1::Job> jobs, store_->ListUnfinishedJobs());
  for (v1::Job& job : jobs) {
    if (job.state() == v1::JOB_STATE_PENDING) continue;
    std::vector<FieldViolation> violations;
    absl::StatusOr<parallel::RankPlan> plan = ValidateJobSpec(job.spec(), &violations);
    if (!plan.ok()) {
      // A spec this version no longer accepts cannot be re-attached.
      MIMO_RETURN_IF_ERROR(FailAttempt(
          job,
          MakeFailure("COORDINATOR_RESTARTED",
                      absl::StrCat("after a coordinator restart the spec no longer validates: ",
                                   plan.status().message()),
                      0, -1),
          Retry::kNever, now));
      continue;
    }
    Active& active = active_[job.id()];
    active.attempt = job.attempt();
    const int world = plan->world_size();
    active.plan.emplace(*std::move(plan));
    active.worker_of_rank.assign(world, "");
    active.rank_state.assign(world, v1::WORKER_STATE_UNSPECIFIED);
    // Ranks that finished before the restart: their workers, free since, do not come back.
    for (const int32_t r : job.succeeded_ranks()) {
      if (r >= 0 && r < world) active.rank_state[r] = v1::WORKER_STATE_SUCCEEDED;
    }
    // Embedded workers died with the previous coordinator: none is waited for.
    active.reattach_deadline = embedded() ? now : now + options_.reattach_grace;
    active.checkpoint = job.checkpoint_request();
    if (job.state() == v1::JOB_STATE_CANCELLING)
      active.cancel_deadline = now + options_.cancel_grace;
  }
  // Before serving: a dying worker of the previous coordinator must not re-attach meanwhile.
  if (embedded()) CheckActiveJobs(now);
  Changed();
  return absl::OkStatus();
}

absl::StatusOr<v1::Job> JobManager::SubmitJob(const v1::JobSpec& spec,
                                              const std::string& request_id,
                                              std::vector<FieldViolation>* violations,
                                              absl::Time now) {
  MIMO_RETURN_IF_ERROR(ValidateJobSpec(spec, violations).status());
  if (std::vector<FieldViolation> found = CheckEmbeddedWorkersSuffice(spec); !found.empty()) {
    const std::string message = DescribeViolations(found);
    if (violations != nullptr) *violations = std::move(found);
    return absl::InvalidArgumentError(message);
  }
  absl::MutexLock lock(&mu_);
  MIMO_ASSIGN_OR_RETURN(JobStore::Created created, store_->CreateJob(spec, request_id, now));
  if (created.created) {
    Changed();
    Schedule(now);
    MIMO_ASSIGN_OR_RETURN(created.job, store_->GetJob(created.job.id()));
  }
  return created.job;
}

absl::StatusOr<v1::Job> JobManager::GetJob(const std::string& id) { return store_->GetJob(id); }

absl::StatusOr<JobStore::Page> JobManager::ListJobs(int page_size, const std::string& page_token,
                                                    const std::vector<v1::JobState>& states,
                                                    size_t max_bytes) {
  return store_->ListJobs(page_size, page_token, states, max_bytes);
}

absl::StatusOr<std::vector<v1::JobEvent>> JobManager::ListEvents(const std::string& id,
                                                                 int64_t after_sequence,
                                                                 int limit) {
  return store_->ListEvents(id, after_sequence, limit);
}

absl::StatusOr<std::vector<v1::LogLine>> JobManager::ReadLogs(const JobStore::LogQuery& query) {
  return store_->ReadLogs(query);
}

absl::StatusOr<v1::Job> JobManager::CancelJob(const std::string& id, const std::string& reason,
                                              absl::Time now) {
  absl::MutexLock lock(&mu_);
  MIMO_ASSIGN_OR_RETURN(v1::Job job, store_->GetJob(id));
  if (IsTerminal(job.state())) {
    return absl::FailedPreconditionError(
        absl::StrCat("job ", id, " is already ", StateName(job.state()), "; nothing to cancel"));
  }
  if (job.state() == v1::JOB_STATE_CANCELLING) return job;
  const std::string why = reason.empty() ? "cancelled by the user" : reason;
  MIMO_RETURN_IF_ERROR(Transition(job, v1::JOB_STATE_CANCELLING, why, now));
  auto it = active_.find(id);
  if (it == active_.end()) {
    MIMO_RETURN_IF_ERROR(Transition(job, v1::JOB_STATE_CANCELLED, why, now));
    return job;
  }
  it->second.cancel_deadline = now + options_.cancel_grace;
  ReleaseAttempt(id, why, now);
  CheckActiveJobs(now);  // Cancels at once when no worker still has to confirm.
  Schedule(now);         // Workers that never fetched their rank are free for other jobs.
  return store_->GetJob(id);
}

absl::StatusOr<v1::Job> JobManager::CheckpointJob(const std::string& id, bool stop,
                                                  const std::string& reason, absl::Time now) {
  absl::MutexLock lock(&mu_);
  MIMO_ASSIGN_OR_RETURN(v1::Job job, store_->GetJob(id));
  if (job.spec().checkpointing().dir().empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("job ", id, " saves no checkpoints: its spec has no checkpointing.dir"));
  }
  auto active = active_.find(id);
  if (job.state() != v1::JOB_STATE_RUNNING || active == active_.end()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "job ", id, " is ", StateName(job.state()), "; only a running job can save a checkpoint",
        job.state() == v1::JOB_STATE_PENDING || job.state() == v1::JOB_STATE_SCHEDULED
            ? " (its ranks have not all started yet)"
            : ""));
  }
  v1::CheckpointRequest& request = *job.mutable_checkpoint_request();
  if (request.stop()) return job;  // Stopping already; a second stop changes nothing.
  request.set_sequence(request.sequence() + 1);
  request.set_stop(stop);
  request.set_reason(reason);
  *request.mutable_time() = ToProto(now);
  *job.mutable_update_time() = ToProto(now);
  v1::JobEvent event;
  event.set_message(absl::StrCat("checkpoint requested", stop ? ", then stop" : "",
                                 reason.empty() ? "" : ": ", reason));
  *event.mutable_time() = ToProto(now);
  MIMO_RETURN_IF_ERROR(store_->UpdateJob(job, std::move(event)).status());
  active->second.checkpoint = job.checkpoint_request();  // Stored first: the workers act on it.
  Changed();
  return job;
}

int64_t JobManager::version() {
  absl::MutexLock lock(&mu_);
  return version_;
}

int64_t JobManager::WaitForChange(int64_t seen, absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  auto changed = [this, seen]()
                     ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return version_ != seen || shutdown_; };
  mu_.AwaitWithDeadline(absl::Condition(&changed), deadline);
  return version_;
}

void JobManager::BeginDrain() {
  absl::MutexLock lock(&mu_);
  draining_ = true;
  Changed();
}

void JobManager::Shutdown() {
  absl::MutexLock lock(&mu_);
  shutdown_ = true;
  Changed();
}

bool JobManager::shutting_down() {
  absl::MutexLock lock(&mu_);
  return shutdown_;
}

absl::Status JobManager::Transition(v1::Job& job, v1::JobState to, const std::string& message,
                                    absl::Time now) {
  MIMO_RETURN_IF_ERROR(CheckTransition(job.state(), to));
  job.set_state(to);
  job.set_state_reason(message);
  *job.mutable_update_time() = ToProto(now);
  // Set once: the active deadline counts from the first start, across attempts.
  if (to == v1::JOB_STATE_SCHEDULED && !job.has_start_time()) {
    *job.mutable_start_time() = ToProto(now);
  }
  if (IsTerminal(to)) {
    *job.mutable_end_time() = ToProto(now);
    lost_before_fetch_.erase(job.id());
  }
  v1::JobEvent event;
  event.set_state(to);
  event.set_message(message);
  *event.mutable_time() = ToProto(now);
  MIMO_RETURN_IF_ERROR(store_->UpdateJob(job, std::move(event)).status());
  Changed();
  return absl::OkStatus();
}

void JobManager::ReleaseAttempt(const std::string& job_id, const std::string& reason,
                                absl::Time now) {
  auto it = active_.find(job_id);
  for (auto& [id, worker] : workers_) {
    if (worker.job_id != job_id) continue;
    if (worker.has_assignment) {
      // It may be running its rank: it stays bound until it reports that it stopped (or its
      // heartbeats stop).
      if (!worker.stop) worker.stop_time = now;
      worker.stop = true;
      worker.stop_reason = reason;
      continue;
    }
    // It never learned its rank, so it runs nothing, and a STOP heartbeat names no job it could
    // confirm a stop for: it is idle again at once and its rank counts as stopped.
    if (it != active_.end() && worker.attempt == it->second.attempt && worker.rank >= 0 &&
        worker.rank < static_cast<int>(it->second.rank_state.size()) &&
        it->second.worker_of_rank[worker.rank] == id) {
      it->second.rank_state[worker.rank] = v1::WORKER_STATE_STOPPED;
    }
    worker = Worker{.info = worker.info, .last_heartbeat = worker.last_heartbeat};
  }
  Changed();
  if (it == active_.end()) return;
  const std::string prefix = absl::StrCat(job_id, "/", it->second.attempt, "/");
  kv_.erase(kv_.lower_bound(prefix), kv_.lower_bound(prefix + '\xff'));
}

absl::Status JobManager::FailAttempt(v1::Job& job, const v1::Failure& failure, Retry retry,
                                     absl::Time now) {
  const std::string id = job.id();
  absl::Status stored;
  bool preempted = false;
  if (job.state() == v1::JOB_STATE_CANCELLING) {
    stored = Transition(job, v1::JOB_STATE_CANCELLED, job.state_reason(), now);
  } else {
    const int restarts_used = job.attempt() - 1 - job.preemptions();
    // A job asked to stop is not restarted: the user wanted it to end.
    const bool restart =
        !job.checkpoint_request().stop() && job.state() != v1::JOB_STATE_PENDING &&
        (retry == Retry::kPreempted ||
         (retry == Retry::kIfAllowed && restarts_used < job.spec().max_restarts()));
    if (restart) {
      const std::string message =
          retry == Retry::kPreempted
              ? absl::StrCat("attempt ", job.attempt(), " ended for a drained worker (",
                             failure.message(), "); restarting from that checkpoint as attempt ",
                             job.attempt() + 1)
              : absl::StrCat("attempt ", job.attempt(), " failed (", failure.reason(), ": ",
                             failure.message(), "); restarting as attempt ", job.attempt() + 1,
                             " of ", job.spec().max_restarts() + job.preemptions() + 1);
      preempted = retry == Retry::kPreempted;
      if (preempted) job.set_preemptions(job.preemptions() + 1);
      job.set_attempt(job.attempt() + 1);
      job.clear_progress();
      job.clear_last_metrics();        // The new attempt's steps start again from the checkpoint's.
      job.clear_checkpoint_request();  // The new attempt's ranks count requests afresh.
      stored = Transition(job, v1::JOB_STATE_PENDING, message, now);
    } else {
      *job.mutable_failure() = failure;
      stored = Transition(job, v1::JOB_STATE_FAILED,
                          absl::StrCat(failure.reason(), ": ", failure.message()), now);
    }
  }
  if (!stored.ok()) {
    if (auto it = active_.find(id); it != active_.end()) {
      it->second.unstored_failure.emplace(failure, retry);
    }
    return stored;
  }
  if (preempted) after_preemption_.insert(id);
  ReleaseAttempt(id, failure.message(), now);
  active_.erase(id);
  return absl::OkStatus();
}

absl::Status JobManager::MarkRunningWhenAllRanksRun(v1::Job& job, const Active& active,
                                                    const std::string& message, absl::Time now) {
  const auto& states = active.rank_state;
  if (job.state() != v1::JOB_STATE_SCHEDULED ||
      !std::all_of(states.begin(), states.end(), [](v1::WorkerState s) {
        return s == v1::WORKER_STATE_RUNNING || s == v1::WORKER_STATE_SUCCEEDED;
      })) {
    return absl::OkStatus();
  }
  return Transition(job, v1::JOB_STATE_RUNNING, message, now);
}

void JobManager::Tick(absl::Time now) {
  const absl::Duration ttl = options_.finished_job_ttl;
  bool delete_finished = false;
  {
    absl::MutexLock lock(&mu_);
    // Workers stopped by the shutdown (or the drain before it) are not failures.
    if (shutdown_ || draining_) return;
    CheckWorkers(now);
    CheckActiveJobs(now);
    Schedule(now);
    if (now - last_purge_ > absl::Minutes(10)) {
      last_purge_ = now;
      store_->PurgeRequestIds(now - absl::Hours(24)).IgnoreError();
    }
    if (ttl > absl::ZeroDuration() && now - last_ttl_check_ >= std::min(ttl, absl::Minutes(10))) {
      last_ttl_check_ = now;
      delete_finished = true;
    }
  }
  if (!delete_finished) return;
  // Outside mu_ (heartbeats and reports go on meanwhile): the jobs it deletes have ended, so the
  // manager holds nothing of them. A failure (a locked database, say) is tried again at the next
  // check.
  const absl::StatusOr<int64_t> deleted = store_->DeleteFinishedJobs(now - ttl);
  if (!deleted.ok()) {
    std::cerr << "mimo-coordinator: deleting the jobs that ended before "
              << absl::FormatTime(now - ttl) << ": " << deleted.status() << '\n';
  }
}

void JobManager::CheckWorkers(absl::Time now) {
  std::vector<std::string> silent;
  for (const auto& [id, w] : workers_) {
    if (now - w.last_heartbeat > options_.heartbeat_timeout) silent.push_back(id);
  }
  for (const std::string& id : silent) {
    DropWorker(
        id, "HEARTBEAT_TIMEOUT",
        absl::StrCat("sent no heartbeat for ", absl::FormatDuration(options_.heartbeat_timeout)), 0,
        {}, now);
  }
}

void JobManager::DropWorker(const std::string& worker_id, const std::string& reason,
                            const std::string& what, int exit_code,
                            const std::vector<std::string>& logs, absl::Time now) {
  auto it = workers_.find(worker_id);
  if (it == workers_.end()) return;
  const Worker& w = it->second;
  const std::string job_id = w.job_id;
  const int attempt = w.attempt;
  const int rank = w.rank;
  const bool told_to_stop = w.stop;
  const bool fetched = w.has_assignment;
  // Silent since before it was told to stop (or its process is gone): dead before the failure.
  const bool dead_before_stop =
      told_to_stop && (reason == "WORKER_EXITED" || w.last_heartbeat < w.stop_time);
  const std::string who = absl::StrCat("rank ", rank, " (worker ", worker_id, " on ", w.info.host(),
                                       ", device ", w.info.local_index(), ")");
  workers_.erase(it);
  Changed();
  // What the worker left behind belongs to its rank's logs even when the attempt already ended
  // (a peer may have reported the broken connection first).
  if (!logs.empty() && !job_id.empty() && rank >= 0) {
    store_->AppendLogs(job_id, attempt, rank, logs, now).IgnoreError();
  }
  if (dead_before_stop && !job_id.empty() && rank >= 0) {
    BlameDeadRank(job_id, attempt, rank, reason, absl::StrCat(who, " ", what), exit_code, now);
  }
  auto active = active_.find(job_id);
  // Only the worker holding a rank of the job's current attempt counts: one left over from an
  // earlier attempt (told to stop, never confirming) says nothing about the current one.
  if (job_id.empty() || active == active_.end() || active->second.attempt != attempt || rank < 0 ||
      rank >= static_cast<int>(active->second.worker_of_rank.size()) ||
      active->second.worker_of_rank[rank] != worker_id) {
    return;
  }
  absl::StatusOr<v1::Job> job = store_->GetJob(job_id);
  if (!job.ok() || IsTerminal(job->state())) return;
  if (job->state() == v1::JOB_STATE_CANCELLING) {
    active->second.rank_state[rank] = v1::WORKER_STATE_STOPPED;
    return;
  }
  if (told_to_stop) return;  // Its attempt is ending anyway; its end changes nothing.
  if (!fetched && job->state() == v1::JOB_STATE_SCHEDULED) {
    // Its rank never started (it was likely dead when it was picked), so no attempt is used up:
    // the job waits for workers again as the same attempt, like a SCHEDULED job after a
    // coordinator restart. Schedule holds it back until the ranks that did start have stopped.
    // Only a few times per attempt: a worker that keeps dying between registering and fetching
    // its rank (a crash as it starts, a failing device) would send the job back forever; after
    // that the attempt fails as for any other lost rank.
    auto& [counted_attempt, returns] = lost_before_fetch_[job_id];
    if (counted_attempt != attempt) {
      counted_attempt = attempt;
      returns = 0;
    }
    if (returns < kMaxReturnsForUnfetchedRanks) {
      const std::string message =
          absl::StrCat("attempt ", attempt, ": ", who, " ", what,
                       " before it fetched its rank; waiting for workers again");
      if (!Transition(*job, v1::JOB_STATE_PENDING, message, now).ok()) return;
      ++returns;
      ReleaseAttempt(job_id, message, now);
      active_.erase(job_id);
      return;
    }
  }
  FailAttempt(*job, MakeFailure(reason, absl::StrCat(who, " ", what), exit_code, rank),
              Retry::kIfAllowed, now)
      .IgnoreError();
}

void JobManager::BlameDeadRank(const std::string& job_id, int attempt, int rank,
                               const std::string& reason, const std::string& what, int exit_code,
                               absl::Time now) {
  absl::StatusOr<v1::Job> job = store_->GetJob(job_id);
  if (!job.ok()) return;
  const bool failed_here = job->state() == v1::JOB_STATE_FAILED && job->attempt() == attempt;
  const bool restarted = job->attempt() == attempt + 1 && !IsTerminal(job->state());
  if (!failed_here && !restarted) return;  // Cancelled, or long past this attempt.
  if (failed_here && job->failure().rank() == rank) return;
  const std::string earlier = failed_here
                                  ? absl::StrCat("rank ", job->failure().rank(),
                                                 " had reported: ", job->failure().message())
                                  : "the attempt had already failed";
  const std::string message = absl::StrCat(what, ", and was silent before attempt ", attempt,
                                           " failed: most likely the cause; ", earlier);
  if (failed_here) {
    *job->mutable_failure() = MakeFailure(reason, message, exit_code, rank);
    job->set_state_reason(absl::StrCat(reason, ": ", message));
  }
  *job->mutable_update_time() = ToProto(now);
  v1::JobEvent event;  // Neither a state nor metrics: a note on the failure.
  event.set_message(absl::StrCat("attempt ", attempt, ": ", message));
  *event.mutable_time() = ToProto(now);
  store_->UpdateJob(*job, std::move(event)).IgnoreError();
  Changed();
}

void JobManager::WorkerProcessStarted(int local_index, int pid) {
  absl::MutexLock lock(&mu_);
  if (local_index >= 0 && local_index < static_cast<int>(slot_pids_.size())) {
    slot_pids_[local_index] = pid;
  }
}

void JobManager::WorkerProcessExited(const std::string& host, int pid, int exit_code,
                                     const std::string& how,
                                     const std::vector<std::string>& stderr_tail, absl::Time now) {
  absl::MutexLock lock(&mu_);
  if (host == options_.embedded.host) {
    // Once the process is reaped (after this call), its pid may be another process's.
    std::replace(slot_pids_.begin(), slot_pids_.end(), pid, 0);
  }
  std::string worker_id;
  for (const auto& [id, w] : workers_) {
    if (w.info.pid() == pid && w.info.host() == host) worker_id = id;
  }
  if (worker_id.empty()) return;  // It never registered, or was dropped already.
  if (shutdown_ || draining_) {
    // Stopped by the shutdown: its job is left to the next start's Recover. But the rank of a
    // cancelled job counts as stopped, as it would without the drain, and may end that job now
    // (as a confirmation does: see ReportStatus).
    const Worker w = workers_.at(worker_id);
    workers_.erase(worker_id);
    Changed();
    auto active = active_.find(w.job_id);
    if (shutdown_ || active == active_.end() || active->second.attempt != w.attempt || w.rank < 0 ||
        w.rank >= static_cast<int>(active->second.worker_of_rank.size()) ||
        active->second.worker_of_rank[w.rank] != worker_id) {
      return;
    }
    absl::StatusOr<v1::Job> job = store_->GetJob(w.job_id);
    if (!job.ok() || job->state() != v1::JOB_STATE_CANCELLING) return;
    active->second.rank_state[w.rank] = v1::WORKER_STATE_STOPPED;
    SettleCancelling(*job, now);
    return;
  }
  std::vector<std::string> logs = {
      absl::StrCat("[mimo-coordinator] the worker process (pid ", pid, ") ", how,
                   stderr_tail.empty()
                       ? ""
                       : absl::StrCat("; the last ", stderr_tail.size(), " lines of its stderr:"))};
  logs.insert(logs.end(), stderr_tail.begin(), stderr_tail.end());
  DropWorker(worker_id, "WORKER_EXITED", absl::StrCat(how, " (pid ", pid, ")"), exit_code, logs,
             now);
  Schedule(now);
}

void JobManager::SettleCancelling(v1::Job& job, absl::Time now) {
  const std::string id = job.id();
  auto it = active_.find(id);
  if (it == active_.end()) return;
  const Active& active = it->second;
  const auto& states = active.rank_state;
  const bool all_settled = std::all_of(states.begin(), states.end(), [](v1::WorkerState s) {
    return s == v1::WORKER_STATE_STOPPED || s == v1::WORKER_STATE_SUCCEEDED ||
           s == v1::WORKER_STATE_FAILED;
  });
  const bool none_attached = UnattachedRanks(active).size() == active.worker_of_rank.size();
  if (!all_settled && !none_attached && now < active.cancel_deadline) return;
  const std::string message =
      all_settled || none_attached
          ? job.state_reason()
          : absl::StrCat(job.state_reason(), " (workers did not confirm the stop within ",
                         absl::FormatDuration(options_.cancel_grace), ")");
  // Stored first: when the store fails, the attempt stays for the next tick to try again.
  if (!Transition(job, v1::JOB_STATE_CANCELLED, message, now).ok()) return;
  ReleaseAttempt(id, message, now);
  active_.erase(id);
}

void JobManager::CheckActiveJobs(absl::Time now) {
  std::vector<std::string> ids;
  for (const auto& [id, active] : active_) ids.push_back(id);
  for (const std::string& id : ids) {
    Active& active = active_.at(id);
    absl::StatusOr<v1::Job> job = store_->GetJob(id);
    if (!job.ok()) continue;
    if (active.unstored_failure) {
      // A failure the store did not take: stored now (or kept for the next tick again).
      const auto [failure, retry] = *active.unstored_failure;
      FailAttempt(*job, failure, retry, now).IgnoreError();
      continue;
    }
    if (job->state() == v1::JOB_STATE_RUNNING && AllSucceeded(active)) {
      // Every rank had succeeded when the coordinator restarted, before the job was marked so.
      Succeed(*job, now).IgnoreError();
      continue;
    }
    if (job->state() == v1::JOB_STATE_CANCELLING) {
      SettleCancelling(*job, now);
      continue;
    }
    const std::vector<std::string> missing = UnattachedRanks(active);
    // How the missing ranks' workers are gone.
    const std::string not_back =
        embedded() ? std::string(" stopped with the previous coordinator (embedded workers)")
                   : absl::StrCat(" did not re-register within ",
                                  absl::FormatDuration(options_.reattach_grace));
    if (!missing.empty() && now >= active.reattach_deadline) {
      if (job->state() == v1::JOB_STATE_SCHEDULED &&
          missing.size() == active.worker_of_rank.size()) {
        // No worker claims the attempt: none had fetched its rank before the restart (or those
        // that had are gone as well), so nothing runs it and it can be scheduled again as is.
        const std::string message =
            absl::StrCat("the coordinator restarted before attempt ", active.attempt,
                         " started and none of its workers",
                         embedded() ? " could come back (embedded workers)"
                                    : absl::StrCat(" re-registered within ",
                                                   absl::FormatDuration(options_.reattach_grace)),
                         "; waiting for workers again");
        if (!Transition(*job, v1::JOB_STATE_PENDING, message, now).ok()) continue;
        ReleaseAttempt(id, message, now);
        active_.erase(id);
        continue;
      }
      if (job->checkpoint_request().stop()) {
        // The job was stopping after a checkpoint: ranks that had finished their part were free
        // before the restart and do not come back. It ends as asked, without a restart.
        const std::string message = absl::StrCat(
            "stopped after a checkpoint request (", job->checkpoint_request().reason(),
            "); the coordinator restarted meanwhile and the workers of rank",
            missing.size() == 1 ? " " : "s ", absl::StrJoin(missing, ", "), not_back,
            ", so whether the checkpoint was committed is unconfirmed: see the checkpoint "
            "folder's latest_checkpointed_iteration.txt");
        if (!Transition(*job, v1::JOB_STATE_CANCELLING, message, now).ok()) continue;
        // From here on the cancelling branch above ends it at once, at the next tick if need be.
        active.cancel_deadline = now;
        if (!Transition(*job, v1::JOB_STATE_CANCELLED, message, now).ok()) continue;
        ReleaseAttempt(id, message, now);
        active_.erase(id);
        continue;
      }
      FailAttempt(*job,
                  MakeFailure("COORDINATOR_RESTARTED",
                              absl::StrCat("the coordinator restarted and the workers of rank",
                                           missing.size() == 1 ? " " : "s ",
                                           absl::StrJoin(missing, ", "), not_back),
                              0, missing.size() == 1 ? std::stoi(missing[0]) : -1),
                  Retry::kIfAllowed, now)
          .IgnoreError();
      continue;
    }
    // Final: another attempt would start past the deadline too.
    if (std::optional<absl::Duration> limit = PastActiveDeadline(*job, now)) {
      FailAttempt(*job, DeadlineFailure(*limit), Retry::kNever, now).IgnoreError();
    }
  }
}

namespace {

// " (not counting W1; W2: told to stop more than GRACE ago, never confirmed)", or "".
std::string NotCounted(const std::vector<std::string>& stuck, absl::Duration grace) {
  if (stuck.empty()) return "";
  return absl::StrCat(" (not counting ", absl::StrJoin(stuck, "; "), ": told to stop more than ",
                      absl::FormatDuration(grace), " ago, never confirmed)");
}

}  // namespace

void JobManager::NoteWaiting(v1::Job& job, const std::string& waiting, absl::Time now) {
  // Why the job went (back) to PENDING stays in front: "attempt 1 failed (...); restarting as
  // attempt 2 of 2; now waiting for ...". A fresh submission says only what it waits for.
  static constexpr absl::string_view kJoin = "; now ";
  std::string base = job.state_reason();
  if (absl::StartsWith(base, "waiting for ") || base == "submitted") {
    base.clear();
  } else if (const size_t at = base.rfind(absl::StrCat(kJoin, "waiting for "));
             at != std::string::npos) {
    base.resize(at);
  }
  const std::string reason = base.empty() ? waiting : absl::StrCat(base, kJoin, waiting);
  // Stored only when it changes: Schedule runs several times a second.
  if (job.state_reason() == reason) return;
  job.set_state_reason(reason);
  *job.mutable_update_time() = ToProto(now);
  if (store_->SaveJob(job).ok()) Changed();
}

void JobManager::Schedule(absl::Time now) {
  if (shutdown_ || draining_) return;
  absl::StatusOr<std::vector<v1::Job>> jobs = store_->ListUnfinishedJobs();
  if (!jobs.ok()) return;
  std::map<std::string, absl::Time> short_since;
  // An idle worker silent this long gets no rank: see below.
  const absl::Duration silent_limit = std::max(
      2 * options_.heartbeat_interval, options_.heartbeat_timeout - options_.heartbeat_interval);
  for (size_t index = 0; index < jobs->size(); ++index) {
    v1::Job& job = (*jobs)[index];
    if (job.state() != v1::JOB_STATE_PENDING || active_.contains(job.id())) continue;
    // A job waiting to restart keeps counting from its first start.
    if (std::optional<absl::Duration> limit = PastActiveDeadline(job, now)) {
      FailAttempt(job, DeadlineFailure(*limit), Retry::kNever, now).IgnoreError();
      continue;
    }
    // Two jobs writing one checkpoint folder overwrite each other's iterations and latest file
    // (and keep_last deletes the other's): the later one waits, like a Slurm singleton, so the
    // same spec submitted again without a cancel resumes once the first run has ended.
    if (const std::string in_use = FolderInUse(*jobs, index); !in_use.empty()) {
      NoteWaiting(job, in_use, now);
      continue;
    }
    const int world = job.spec().resources().workers();
    const v1::DeviceKind device = job.spec().resources().device();
    std::vector<std::string> idle, stuck;
    int registered = 0;
    // Workers still running ranks of this very attempt (scheduled once already, then sent back
    // to PENDING): rescheduling the attempt before they stop would let them into its rendezvous.
    int earlier_ranks = 0;
    for (const auto& [id, w] : workers_) {
      // Told to stop longer than the cancel grace ago and still not confirming (a collective
      // hung in its process, a stuck file system): not a worker a job can wait for.
      const bool is_stuck =
          w.stop && !w.job_id.empty() && now - w.stop_time > options_.cancel_grace;
      if (w.job_id == job.id() && w.attempt == job.attempt() && !is_stuck) ++earlier_ranks;
      if (w.info.device() != device || w.leaving) continue;
      if (is_stuck) {
        stuck.push_back(absl::StrCat(id, " on ", w.info.host(), ", device ", w.info.local_index()));
        continue;
      }
      ++registered;
      // One silent for all but one heartbeat interval of its timeout (and at least two missed
      // beats) is about to be declared dead: a rank given to it would most likely only wait for
      // that. No earlier than that, as a live worker's beats may come late (a loaded host, a slow
      // network); and a rank that does go to a dead worker is not lost either: the job goes back
      // to PENDING as the same attempt when that worker is dropped before fetching its rank.
      if (w.job_id.empty() && now - w.last_heartbeat <= silent_limit) idle.push_back(id);
    }
    if (registered < world) {
      auto it = short_of_workers_since_.find(job.id());
      const absl::Time since = it == short_of_workers_since_.end() ? now : it->second;
      // A job restarted for a drained worker waits for its replacement however long it takes
      // (a new node, spot capacity coming back).
      if (now - since >= options_.join_timeout && !after_preemption_.contains(job.id())) {
        FailAttempt(job,
                    MakeFailure("JOIN_TIMEOUT",
                                absl::StrCat("only ", registered, " of the ", world, " ",
                                             DeviceKindWord(device),
                                             " workers the job needs registered within ",
                                             absl::FormatDuration(options_.join_timeout),
                                             NotCounted(stuck, options_.cancel_grace)),
                                0, -1),
                    Retry::kNever, now)
            .IgnoreError();
      } else {
        short_since[job.id()] = since;
        NoteWaiting(job, WaitingForWorkers(world, device, registered, stuck), now);
      }
      continue;
    }
    if (static_cast<int>(idle.size()) < world) {
      NoteWaiting(job, WaitingForWorkers(world, device, registered, stuck), now);
      continue;
    }
    if (earlier_ranks > 0) {
      NoteWaiting(job,
                  absl::StrCat("waiting for ", earlier_ranks, " rank",
                               earlier_ranks == 1 ? "" : "s", " of attempt ", job.attempt(),
                               "'s earlier scheduling to confirm that they stopped"),
                  now);
      continue;
    }
    std::vector<FieldViolation> violations;
    absl::StatusOr<parallel::RankPlan> plan = ValidateJobSpec(job.spec(), &violations);
    if (!plan.ok()) {
      FailAttempt(job, MakeFailure("INVALID_SPEC", std::string(plan.status().message()), 0, -1),
                  Retry::kNever, now)
          .IgnoreError();
      continue;
    }
    // Ranks in a deterministic order: by host, then local device index.
    std::sort(idle.begin(), idle.end(), [this](const std::string& a, const std::string& b) {
      const v1::WorkerInfo& x = workers_.at(a).info;
      const v1::WorkerInfo& y = workers_.at(b).info;
      return std::make_tuple(x.host(), x.local_index(), a) <
             std::make_tuple(y.host(), y.local_index(), b);
    });
    Active& active = active_[job.id()];
    active.attempt = job.attempt();
    active.plan.emplace(*std::move(plan));
    active.worker_of_rank.assign(idle.begin(), idle.begin() + world);
    active.rank_state.assign(world, v1::WORKER_STATE_UNSPECIFIED);
    job.clear_succeeded_ranks();  // Of an earlier attempt.
    for (int r = 0; r < world; ++r) {
      Worker& w = workers_.at(active.worker_of_rank[r]);
      w.job_id = job.id();
      w.attempt = job.attempt();
      w.rank = r;
      w.stop = false;
      w.stop_reason.clear();
    }
    after_preemption_.erase(job.id());
    Transition(job, v1::JOB_STATE_SCHEDULED,
               absl::StrCat("attempt ", job.attempt(), ": ", RankCount(world), " assigned"), now)
        .IgnoreError();
  }
  short_of_workers_since_ = std::move(short_since);
}

}  // namespace mimo::coordinator
