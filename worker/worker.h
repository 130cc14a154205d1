// The worker's main loop: register, heartbeat, take assignments and run them, one at a time.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "mimo/v1/worker_service.pb.h"
#include "worker/call_canceller.h"
#include "worker/coordinator_client.h"
#include "worker/job_log.h"

namespace mimo::worker {

struct WorkerOptions {
  CoordinatorClientOptions coordinator;
  // The host name the worker registers with; empty: gethostname().
  std::string host;
  // Device ordinal on the host (or CPU slot).
  int local_index = 0;
  v1::DeviceKind device = v1::DEVICE_KIND_CPU;
  // The address Gloo listens on for its peers; empty: the host name's address.
  std::string listen_address;
  // How long Run() waits for the first connection to the coordinator.
  absl::Duration connect_timeout = absl::Seconds(30);
  // How long one GetAssignment call waits for an assignment before asking again.
  absl::Duration assignment_wait = absl::Seconds(10);
  // How long connecting the process groups, and each later collective, may wait for peers.
  absl::Duration comm_timeout = absl::Seconds(60);
  JobLogOptions log;
};

// The exit codes of mimo-worker.
inline constexpr int kExitStopped = 0;      // Stopped by SIGTERM or SIGINT.
inline constexpr int kExitError = 1;        // Registration refused, or another fatal error.
inline constexpr int kExitUsage = 2;        // Bad flags.
inline constexpr int kExitUnreachable = 3;  // The coordinator could not be reached, or was lost.

// The exit code for what Run() returned.
int ExitCodeFor(const absl::Status& status);

// One worker process (or, in tests, one thread): registers with the coordinator, sends a
// heartbeat every heartbeat_interval from its own thread, and runs the assignments it gets, one
// after another (workers persist across jobs). The heartbeat's answer steers it:
//   - STOP: the running job's communicators are aborted and the job reports STOPPED;
//   - REGISTER (the coordinator restarted and forgot it): it registers again, naming the running
//     assignment in `resume`, so that the coordinator re-attaches the job;
//   - no answer for longer than heartbeat_timeout and the coordinator's reattach grace (the time
//     a restarted coordinator waits for running jobs' workers): the coordinator is lost (dead,
//     or alive and past declaring this worker dead), so the worker aborts the running job and
//     Run() fails with Unavailable. Within that time it keeps its job and, when the coordinator
//     answers again (restarted), registers again to re-attach it.
// A job reports STARTING, builds one Gloo communicator per group of its rank, reports RUNNING,
// runs by kind, and reports SUCCEEDED, FAILED (exit_code, message) or STOPPED. Its log lines go
// to the coordinator and to stderr.
class Worker {
 public:
  explicit Worker(WorkerOptions options);
  // Run() must have returned (or never been called).
  ~Worker();

  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Serves until Stop() (OK) or a fatal error: Unavailable when the coordinator cannot be
  // reached within connect_timeout or is lost later; the registration's error when it is refused.
  absl::Status Run();

  // Aborts the running job (it reports STOPPED with `reason`) and makes Run() return OK.
  // Thread-safe; not async-signal-safe (call it from a signal-handling thread).
  void Stop(const std::string& reason);
  // Stop() for a worker being taken away (SIGTERM: a node drain, a preemption): a running
  // training job that saves checkpoints is asked to save after its current step and stop (every
  // rank of the job agrees on it, as on a `mimoctl checkpoint --stop`; the coordinator then
  // restarts the job from that checkpoint on the workers it has); any other job is aborted as
  // Stop() does. Run() returns OK once the job has ended. A Stop() after it aborts the save.
  void Drain(const std::string& reason);

  // The id the coordinator gave this worker; empty before registration.
  std::string worker_id() const;

 private:
  struct RunningJob;
  struct Registration {
    std::string worker_id;
    absl::Duration heartbeat_interval;
    absl::Duration heartbeat_timeout;
    // The coordinator is given up after this long without an answer: the longer of
    // heartbeat_timeout and its reattach grace.
    absl::Duration lost_after;
  };

  absl::Status RegisterNow(const v1::RunningAssignment& resume);
  void HeartbeatLoop();
  // Acts on one heartbeat answer.
  void OnHeartbeat(const v1::HeartbeatResponse& response);
  // Aborts the running job, if any, with `reason`.
  void AbortJob(const std::string& reason);
  // Called when the running job failed: one heartbeat now asks whether the coordinator is
  // stopping it, and if so the job is aborted (and reports STOPPED). When another rank is
  // stopped first, its connections close and this rank's collectives fail before this worker's
  // own heartbeat brings the STOP; the failure is that stop, not a fault of its own.
  void AskWhetherStopped();
  // Fatal: the coordinator is lost. Aborts the job and ends Run() with `status`.
  void Fail(const absl::Status& status);

  void RunAssignment(const v1::Assignment& assignment);
  // Builds the groups and runs the job by kind; the status becomes the final report.
  absl::Status Execute(const v1::Assignment& assignment, RunningJob& job, JobLog& log);
  // Reports `state` for the assignment. A final state is retried while the coordinator is
  // unreachable (a lost final report would leave the job waiting for this rank forever), until
  // the coordinator is declared lost. `stopped_after_checkpoint`: a STOPPED that a checkpoint
  // request asked for.
  absl::Status Report(const v1::Assignment& assignment, v1::WorkerState state, int exit_code,
                      const std::string& message, bool stopped_after_checkpoint = false);

  Registration registration() const;
  bool stopping() const;
  // Run() is to end once the running job (returned; null when none) has: no new assignment.
  std::shared_ptr<RunningJob> BeginStopping();

  const WorkerOptions options_;
  std::unique_ptr<CoordinatorClient> client_;
  v1::WorkerInfo info_;

  mutable absl::Mutex mu_;
  Registration registration_ ABSL_GUARDED_BY(mu_);
  absl::Time last_contact_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool running_ ABSL_GUARDED_BY(mu_) = false;
  // Run() is ending: the heartbeat thread exits. (It outlives stopping_, so that the coordinator
  // keeps hearing from a worker that is still reporting how its job stopped.)
  bool heartbeat_done_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status fatal_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<RunningJob> job_ ABSL_GUARDED_BY(mu_);
  // The final report of the last job, re-sent if the coordinator still asks this worker to stop
  // it (the first send was lost).
  std::optional<v1::ReportStatusRequest> last_final_ ABSL_GUARDED_BY(mu_);
  // Cancels the assignment long poll when stopping.
  CallCanceller poll_canceller_;
  std::thread heartbeat_;
};

}  // namespace mimo::worker
