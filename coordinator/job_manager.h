// The coordinator's logic, independent of gRPC: job lifecycle, scheduling onto registered
// workers, worker liveness, restart reconciliation and the rendezvous key-value store.
#pragma once

#include <algorithm>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "coordinator/job_store.h"
#include "coordinator/spec_validation.h"
#include "mimo/v1/worker_service.pb.h"
#include "parallel/rank_plan.h"

namespace mimo::coordinator {

// Attempts: a failed attempt restarts the job as the next attempt while spec.max_restarts allows,
// unless retrying cannot help (an exceeded active deadline, a spec that no longer validates):
// those fail the job at once. The active deadline counts from the job's first start: start_time
// is set when the first attempt is scheduled and kept across attempts, so time spent in earlier
// attempts and waiting for workers between them counts too.
class JobManager {
 public:
  struct Options {
    // How often workers are told to heartbeat.
    absl::Duration heartbeat_interval = absl::Seconds(2);
    // A worker silent this long is dead: its job fails (or restarts) naming its rank.
    absl::Duration heartbeat_timeout = absl::Seconds(10);
    // After a coordinator restart, how long a job that was running waits for its workers to
    // re-register before it fails with reason COORDINATOR_RESTARTED. A SCHEDULED job none of
    // whose workers re-registered by then goes back to PENDING instead (same attempt): no worker
    // had started it, so it is simply scheduled again.
    absl::Duration reattach_grace = absl::Seconds(30);
    // How long a cancelled job waits for its workers to confirm they stopped.
    absl::Duration cancel_grace = absl::Seconds(30);
    // How long a PENDING job waits for enough workers of its device kind to *register* (busy
    // ones count: a job queued behind others is not waiting to join) before it fails with reason
    // JOIN_TIMEOUT, naming how many joined. Counted by this coordinator process from when it
    // first saw too few, so a restart starts the count again. A job restarted for a drained
    // worker (a preemption) waits without this limit.
    absl::Duration join_timeout = absl::Minutes(10);
    // How long a job that ended (SUCCEEDED, FAILED or CANCELLED) is kept after its last update,
    // with its events and logs; then it is deleted (checked every 10 minutes, or every ttl when
    // shorter), like a Kubernetes Job's ttlSecondsAfterFinished. Zero keeps every job.
    absl::Duration finished_job_ttl = absl::ZeroDuration();
    // Embedded mode: the workers this coordinator starts itself (LocalWorkers), `count` of them
    // (0: not embedded) of kind `device` on `host`, with local indices 0..count-1.
    struct EmbeddedWorkers {
      int count = 0;
      std::string host;
      v1::DeviceKind device = v1::DEVICE_KIND_UNSPECIFIED;
    };
    // Embedded mode: every worker is a process of this coordinator and dies with it (SIGINT when
    // it dies, a drain when it stops), so after a restart none can re-attach. Recover then
    // settles at once the jobs a previous coordinator left SCHEDULED, RUNNING or CANCELLING, as
    // when reattach_grace passes without their workers. To keep that true, RegisterWorker
    // refuses any worker that is not one of these slots, or whose pid is not that of the process
    // started for its slot (see WorkerProcessStarted): one from another host, or started by hand
    // on this one, would outlive a restart, its job failed meanwhile, and never get the drain's
    // SIGTERM.
    EmbeddedWorkers embedded;
  };

  // `store` must outlive the manager.
  JobManager(JobStore* store, Options options);

  // Loads what a previous coordinator left: jobs that were SCHEDULED, RUNNING or CANCELLING wait
  // `reattach_grace` from `now` for their workers (embedded: are settled at once). Call once,
  // before serving.
  absl::Status Recover(absl::Time now);

  // ---- JobService ----

  // Where this coordinator takes no workers but its own (embedded), a spec that needs more of
  // them, or another device kind, could never start: one violation of resources.workers or
  // resources.device saying so (none otherwise). SubmitJob refuses such a spec (ValidateJob
  // too).
  std::vector<FieldViolation> CheckEmbeddedWorkersSuffice(const v1::JobSpec& spec) const;

  // Validates (filling `violations`, InvalidArgument on failure) and stores a PENDING job;
  // idempotent per non-empty request_id.
  absl::StatusOr<v1::Job> SubmitJob(const v1::JobSpec& spec, const std::string& request_id,
                                    std::vector<FieldViolation>* violations, absl::Time now);
  absl::StatusOr<v1::Job> GetJob(const std::string& id);
  // As JobStore::ListJobs.
  absl::StatusOr<JobStore::Page> ListJobs(int page_size, const std::string& page_token,
                                          const std::vector<v1::JobState>& states,
                                          size_t max_bytes);
  // PENDING jobs are cancelled at once; scheduled ones go through CANCELLING while their
  // workers stop. FailedPrecondition for a finished job; a CANCELLING job is returned as is.
  absl::StatusOr<v1::Job> CancelJob(const std::string& id, const std::string& reason,
                                    absl::Time now);
  // Records a checkpoint request on a RUNNING job (see v1::CheckpointRequest), which its
  // workers learn through their heartbeats; a stop request already recorded is returned as is.
  // FailedPrecondition when the job is not RUNNING or has no checkpointing.dir.
  absl::StatusOr<v1::Job> CheckpointJob(const std::string& id, bool stop, const std::string& reason,
                                        absl::Time now);
  // Events after `after_sequence`, at most `limit` of them (0: all).
  absl::StatusOr<std::vector<v1::JobEvent>> ListEvents(const std::string& id,
                                                       int64_t after_sequence, int limit = 0);
  // The sequence number of the job's newest event (0: none yet).
  absl::StatusOr<int64_t> LastEventSequence(const std::string& id) {
    return store_->LastEventSequence(id);
  }
  absl::StatusOr<std::vector<v1::LogLine>> ReadLogs(const JobStore::LogQuery& query);

  // A counter that grows with every change (job event, log line, worker change, shutdown).
  int64_t version();
  // Waits until version() != `seen`, `deadline` passes, or Shutdown(); returns version().
  int64_t WaitForChange(int64_t seen, absl::Time deadline);

  // ---- WorkerService ----

  // Returns the new worker's id. With `resume` naming a job attempt this coordinator is
  // waiting for (after a restart), the worker is re-attached to its rank. `clock` is read once
  // the manager's lock is held, as Heartbeat's: the worker's first beat comes an interval after
  // the answer.
  absl::StatusOr<std::string> RegisterWorker(const v1::WorkerInfo& info,
                                             const v1::RunningAssignment& resume,
                                             absl::FunctionRef<absl::Time()> clock);
  // `leaving`: the worker exits now; an idle one is forgotten at once, a busy one gets no
  // further rank. `clock` is read once the manager's lock is held: a beat that waited for it
  // (behind a store call stalled on a locked database, say) counts from its answer, as its worker
  // beats again only an interval after that. (Tick's `now` is read before it waits, so the tick
  // that waited out the stall does not find the worker silent either.)
  v1::HeartbeatResponse Heartbeat(const std::string& worker_id, bool leaving,
                                  absl::FunctionRef<absl::Time()> clock);
  // The worker's assignment once it has one, waiting up to `deadline`; unset if none by then.
  // Once fetched, ending the attempt waits for the worker to report that it stopped.
  absl::StatusOr<std::optional<v1::Assignment>> WaitAssignment(const std::string& worker_id,
                                                               absl::Time deadline);
  // InvalidArgument for a state that is unspecified or unknown to this version.
  absl::Status ReportStatus(const v1::ReportStatusRequest& request, absl::Time now);
  absl::Status ReportMetrics(const v1::ReportMetricsRequest& request, absl::Time now);
  absl::Status ReportLogs(const std::string& worker_id, const std::string& job_id, int attempt,
                          int rank, const std::vector<std::string>& lines, absl::Time now);

  // Rendezvous store, scoped per job attempt; only that attempt's workers may use it.
  absl::Status SetKey(const std::string& job_id, int attempt, const std::string& key,
                      std::string value);
  absl::StatusOr<std::optional<std::string>> GetKey(const std::string& job_id, int attempt,
                                                    const std::string& key);
  // DeadlineExceeded naming the missing keys if they are not all set by `deadline`; Unavailable
  // when the coordinator shuts down first.
  absl::StatusOr<std::map<std::string, std::string>> WaitKeys(const std::string& job_id,
                                                              int attempt,
                                                              const std::vector<std::string>& keys,
                                                              absl::Time deadline);

  // ---- Worker processes this coordinator started (embedded mode) ----

  // The process `pid` was started for slot `local_index` (0..embedded.count-1; others are
  // ignored): from now until it exits (WorkerProcessExited), only a worker with this pid may
  // register for the slot. Call it before the process can register.
  void WorkerProcessStarted(int local_index, int pid);

  // The worker process `pid` on `host` exited (`how`: "exited with code 3", "was killed by
  // signal 9 (Killed)"); its slot has no process until the next WorkerProcessStarted. The worker
  // it registered as is forgotten at once; if it held a rank of a running attempt, `stderr_tail`
  // is appended to that rank's logs and the attempt fails with reason WORKER_EXITED and
  // `exit_code` without waiting for the heartbeat timeout. Call it before the process is reaped
  // (a zombie still holds `pid`): once reaped, the pid may be another process's.
  void WorkerProcessExited(const std::string& host, int pid, int exit_code, const std::string& how,
                           const std::vector<std::string>& stderr_tail, absl::Time now);

  // Periodic work: dead workers, reattach and cancel grace periods, active deadlines,
  // scheduling, forgetting old request ids. The server calls it a few times a second.
  void Tick(absl::Time now);

  // The coordinator is stopping its embedded workers with a drain (SIGTERM): no job is scheduled
  // any more and a dead worker fails nothing, but reports, heartbeats and the rendezvous store go
  // on, so that a training job saves a checkpoint and its attempt ends as a preemption (back to
  // PENDING as the next attempt, no restart used), and a job cancelled before the drain is
  // CANCELLED once its ranks confirm their stop. Any other stop of a rank is only recorded: the
  // job is left as it is for the next start's Recover.
  void BeginDrain();
  // Wakes every waiter; later waits return at once.
  void Shutdown();
  bool shutting_down();

  const Options& options() const { return options_; }
  int64_t num_workers();

 private:
  struct Worker {
    v1::WorkerInfo info;
    absl::Time last_heartbeat;
    // The job attempt and rank the worker is bound to ("" when idle).
    std::string job_id;
    int attempt = 0;
    int rank = -1;
    // It fetched its assignment (or re-attached with it), so it may be running its rank. One that
    // did not is unbound at once when the attempt ends: it could never confirm a stop, as a STOP
    // heartbeat names no job to report on.
    bool has_assignment = false;
    bool stop = false;  // Told to stop its job (cancel, another rank failed, deadline).
    std::string stop_reason;
    absl::Time stop_time = absl::InfiniteFuture();  // When it was told to stop.
    // It said it exits after its last report: it gets no rank until it is gone.
    bool leaving = false;
  };
  // Whether another attempt could cure a failure.
  enum class Retry {
    kIfAllowed,
    kNever,
    // The ranks saved a checkpoint and stopped because a worker was drained: restart whatever
    // max_restarts says, counting a preemption instead of a restart.
    kPreempted
  };
  // A job attempt that holds (or, after a restart, waits for) workers.
  struct Active {
    int attempt = 0;
    std::optional<parallel::RankPlan> plan;
    std::vector<std::string> worker_of_rank;  // "" until assigned or re-attached.
    std::vector<v1::WorkerState> rank_state;
    absl::Time reattach_deadline = absl::InfiniteFuture();
    absl::Time cancel_deadline = absl::InfiniteFuture();
    // First metrics report of the attempt, for the ETA.
    std::optional<std::pair<absl::Time, int64_t>> first_metrics;
    // The job's checkpoint_request, for the heartbeats (sequence 0: none).
    v1::CheckpointRequest checkpoint;
    // A failure FailAttempt could not store: the next tick tries again.
    std::optional<std::pair<v1::Failure, Retry>> unstored_failure;
  };

  // Moves `job` to `to`, stores it with a state event, and wakes waiters.
  absl::Status Transition(v1::Job& job, v1::JobState to, const std::string& message, absl::Time now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Ends an attempt that failed: with kIfAllowed, restarts the job as a new attempt if
  // max_restarts allows; else FAILED with `failure`. A job asked to stop (checkpoint request)
  // is never restarted. Releases the attempt's workers. Stored first: when the store fails, the
  // attempt stays active with the failure kept for the next tick to store.
  absl::Status FailAttempt(v1::Job& job, const v1::Failure& failure, Retry retry, absl::Time now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Unbinds the job's workers that never fetched their assignment (their ranks count as
  // stopped), tells the others to stop, and forgets the attempt's rendezvous keys.
  void ReleaseAttempt(const std::string& job_id, const std::string& reason, absl::Time now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A worker told to stop because its attempt failed has died (`what`) without confirming, and
  // was already silent (or exited) when the failure came: its peers most likely failed because
  // of it (their connections to it closed), so the job's failure names its rank instead, and an
  // event says so. Does nothing when the job has moved on to another attempt's failure.
  void BlameDeadRank(const std::string& job_id, int attempt, int rank, const std::string& reason,
                     const std::string& what, int exit_code, absl::Time now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Moves a SCHEDULED job to RUNNING, with `message`, once every rank of `active` runs (or
  // already succeeded); does nothing otherwise.
  absl::Status MarkRunningWhenAllRanksRun(v1::Job& job, const Active& active,
                                          const std::string& message, absl::Time now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Schedule(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Makes the state_reason of a PENDING job say what it still waits for (`waiting`, "waiting for
  // ..."), after why it went to PENDING unless it was just submitted; stored (without an event)
  // only when it changed.
  void NoteWaiting(v1::Job& job, const std::string& waiting, absl::Time now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void CheckWorkers(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Forgets a worker that is gone (silent, or its process exited). If it held a rank of its
  // job's current attempt, `logs` go to that rank's logs and the attempt fails with `reason`
  // and the message "rank R (worker W on HOST, device D) <what>" (or, while the job is being
  // cancelled, the rank counts as stopped; or, when the worker had not fetched its rank yet, the
  // SCHEDULED job goes back to PENDING as the same attempt, at most
  // kMaxReturnsForUnfetchedRanks times per attempt).
  void DropWorker(const std::string& worker_id, const std::string& reason, const std::string& what,
                  int exit_code, const std::vector<std::string>& logs, absl::Time now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void CheckActiveJobs(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Ends `job` (CANCELLING) as CANCELLED once every rank of its attempt confirmed its stop (or
  // had ended), none has a worker, or its cancel grace has passed; the attempt is released then.
  // Stored first: when the store fails, the attempt stays for a later call to try again.
  void SettleCancelling(v1::Job& job, absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Ends the attempt of `job` (RUNNING, every rank succeeded): SUCCEEDED at 100%. The attempt
  // stays active when the store fails, for the next report or tick to try again.
  absl::Status Succeed(v1::Job& job, absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The ranks of `active` that wait for a worker: none holds them (after a coordinator restart,
  // until one re-attaches) and they had not succeeded before.
  static std::vector<std::string> UnattachedRanks(const Active& active) {
    std::vector<std::string> out;
    for (size_t r = 0; r < active.worker_of_rank.size(); ++r) {
      if (active.worker_of_rank[r].empty() && active.rank_state[r] != v1::WORKER_STATE_SUCCEEDED) {
        out.push_back(absl::StrCat(r));
      }
    }
    return out;
  }
  // Whether every rank of `active` succeeded.
  static bool AllSucceeded(const Active& active) {
    return std::all_of(active.rank_state.begin(), active.rank_state.end(),
                       [](v1::WorkerState s) { return s == v1::WORKER_STATE_SUCCEEDED; });
  }
  // The job's attempt that `worker_id` claims to run; FailedPrecondition if it does not.
  absl::StatusOr<Active*> BoundAttempt(const std::string& worker_id, const std::string& job_id,
                                       int attempt, int rank) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  v1::Assignment MakeAssignment(const std::string& job_id, const Active& active, int rank,
                                const v1::JobSpec& spec) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Changed() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { ++version_; }
  // See Options::embedded.
  bool embedded() const { return options_.embedded.count > 0; }

  JobStore* const store_;
  const Options options_;
  absl::Mutex mu_;
  int64_t version_ ABSL_GUARDED_BY(mu_) = 0;
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;  // See BeginDrain.
  int64_t next_worker_ ABSL_GUARDED_BY(mu_) = 1;
  // Tells this coordinator's worker ids from an earlier one's: random, in base 36.
  const std::string instance_;
  absl::Time last_purge_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  absl::Time last_ttl_check_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  std::map<std::string, Worker> workers_ ABSL_GUARDED_BY(mu_);
  // Embedded mode: the pid of the process running each slot (0: none), by local index.
  std::vector<int> slot_pids_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, Active> active_ ABSL_GUARDED_BY(mu_);
  // PENDING jobs for which fewer workers of their device kind than their world size are
  // registered, and since when (see Options::join_timeout).
  std::map<std::string, absl::Time> short_of_workers_since_ ABSL_GUARDED_BY(mu_);
  // PENDING jobs restarted for a drained worker: exempt from join_timeout until scheduled (this
  // coordinator process only: a restart of it applies the timeout again).
  std::set<std::string> after_preemption_ ABSL_GUARDED_BY(mu_);
  // How often a rank lost before its worker fetched it sent the job back to PENDING as the same
  // attempt (see DropWorker): job id -> (attempt, returns). Forgotten when the job ends; a new
  // attempt counts from 0.
  std::map<std::string, std::pair<int, int>> lost_before_fetch_ ABSL_GUARDED_BY(mu_);
  static constexpr int kMaxReturnsForUnfetchedRanks = 3;
  // "job_id/attempt/key" -> value.
  std::map<std::string, std::string> kv_ ABSL_GUARDED_BY(mu_);
};

}  // namespace mimo::coordinator
