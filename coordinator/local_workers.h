// The embedded mode's worker pool: mimo-worker processes this coordinator starts on its own host,
// supervised (restarted when they exit, their stderr forwarded and kept for crash reports).
#pragma once

#include <sys/types.h>

#include <deque>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "coordinator/job_manager.h"
#include "mimo/v1/job_spec.pb.h"

namespace mimo::coordinator {

struct LocalWorkersOptions {
  // The mimo-worker program.
  std::string worker_binary;
  // How many workers; slot i runs with --local-index i.
  int count = 0;
  // Their device kind (cuda: slot i drives GPU i).
  v1::DeviceKind device = v1::DEVICE_KIND_CPU;
  // Where they reach the coordinator, e.g. "127.0.0.1:50051".
  std::string coordinator_address;
  // The host name they register with (and that WorkerProcessExited is told).
  std::string host;
  // More arguments for every worker, e.g. {"--token-file", PATH}.
  std::vector<std::string> extra_args;
  // A worker that exited is started again after this long.
  absl::Duration restart_delay = absl::Seconds(1);
  // Stop(): how long workers get to drain after SIGTERM (a training job that saves checkpoints
  // saves one after its current step, then stops) before SIGINT.
  absl::Duration drain_grace = absl::Seconds(30);
  // Stop(): how long workers get to exit after SIGINT before SIGKILL.
  absl::Duration stop_grace = absl::Seconds(5);
  // Lines of each worker's stderr kept for the report of its exit.
  int stderr_tail_lines = 40;
};

// The process handling of LocalWorkers, declared for its tests.
namespace local_workers_internal {

// Forks a child that runs `args` (args[0]: the program's path) with its stdout and stderr on
// `output_fd`, no signal blocked and SIGPIPE at its default action (neither inherited from this
// process). `started` runs with the child's pid before the child may exec: the child waits for
// the end of a pipe, which this process closes once `started` returns, so it never runs the
// program before `started` is done (nothing is written to it: a child already dead would make a
// write raise SIGPIPE here). The child gets SIGINT when the calling thread ends.
absl::StatusOr<pid_t> StartChild(const std::vector<std::string>& args, int output_fd,
                                 absl::FunctionRef<void(pid_t)> started);

// If child `pid` has exited (waiting for it when `wait`), calls `exited` with its exit code (128
// + N for signal N; -1 if it could not be waited for) and how it ended ("exited with code 3",
// "was killed by signal 9 (Killed)"), then reaps it, and returns true; false while it runs. The
// pid stays the exited child's (a zombie) until `exited` returns, so no other process can have
// it yet.
bool AwaitExit(pid_t pid, bool wait,
               absl::FunctionRef<void(int exit_code, std::string how)> exited);

}  // namespace local_workers_internal

class LocalWorkers {
 public:
  // What Start checks first: InvalidArgument for a count < 1 or a worker binary that cannot run.
  static absl::Status CheckOptions(const LocalWorkersOptions& options);

  // Starts the workers and their supervisor. `manager` (told about every start, before the
  // worker runs, and every exit) must outlive this object. CheckOptions' errors.
  static absl::StatusOr<std::unique_ptr<LocalWorkers>> Start(LocalWorkersOptions options,
                                                             JobManager* manager);
  ~LocalWorkers();  // Stop().

  // SIGTERM to every worker (drain: as for a preemption, a training job saves a checkpoint and
  // stops, any other job stops at once), SIGINT to those still running after drain_grace (stop
  // at once), SIGKILL to those still running stop_grace later, and every process reaped (no
  // zombies). Idempotent.
  void Stop();

  // Worker processes started so far, restarts included.
  int started();
  // The running workers' process ids, by slot (-1 for a slot whose worker is not running).
  std::vector<pid_t> pids();

 private:
  struct Slot {
    int index = 0;
    pid_t pid = -1;  // -1 while not running.
    int stderr_fd = -1;
    std::string partial;  // An unfinished stderr line.
    std::deque<std::string> tail;
    absl::Time restart_at = absl::InfinitePast();
  };

  LocalWorkers(LocalWorkersOptions options, JobManager* manager);
  absl::Status Spawn(Slot& slot) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Reads what the slot's stderr has, forwarding whole lines to our stderr.
  void Drain(Slot& slot) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Reaps the slot's process if it exited and reports it; returns true if it did.
  bool Reap(Slot& slot, bool wait) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Supervise();
  // Stop()'s signals and reaping; run by the supervisor thread, the workers' parent.
  void StopAll() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const LocalWorkersOptions options_;
  JobManager* const manager_;
  absl::Mutex mu_;
  std::vector<Slot> slots_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  int started_ ABSL_GUARDED_BY(mu_) = 0;
  std::thread supervisor_;
};

}  // namespace mimo::coordinator
