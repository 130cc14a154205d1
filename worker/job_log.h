// A job's log: lines go to stderr at once and to the coordinator in batches (ReportLogs).
#pragma once

#include <deque>
#include <functional>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "worker/coordinator_client.h"

namespace mimo::worker {

struct JobLogOptions {
  // Buffered lines are sent at least this often.
  absl::Duration flush_interval = absl::Milliseconds(250);
  // Lines per ReportLogs message; a full batch is sent at once.
  int max_batch_lines = 256;
  // Lines kept while the coordinator cannot be reached; beyond this the oldest are dropped
  // (and the drop is logged), so that a long outage cannot exhaust memory.
  int max_buffered_lines = 10000;
  // Also write each line to stderr, prefixed "[job/attempt rank] ".
  bool echo_to_stderr = true;
};

// One job attempt's log on one rank. A background thread sends the lines, so that logging never
// blocks the job on the network. Lines the coordinator refuses (the rank is no longer bound to
// the attempt) are dropped; lines it could not be reached for are retried. Thread-safe.
class JobLog {
 public:
  // `worker_id` returns the worker's current id (it changes when the worker re-registers).
  // `client` must outlive the log.
  JobLog(CoordinatorClient* client, std::function<std::string()> worker_id, std::string job_id,
         int attempt, int rank, JobLogOptions options = {});
  // Close()s.
  ~JobLog();

  JobLog(const JobLog&) = delete;
  JobLog& operator=(const JobLog&) = delete;

  // Logs `text`, one line per '\n'-separated part.
  void Line(absl::string_view text);

  // Sends every buffered line (one try each) and stops the sender; later lines go to stderr
  // only. Returns the first error of the final sends. Call it before the final status report:
  // the coordinator unbinds the rank then and refuses its later lines. Idempotent.
  absl::Status Close();

 private:
  void SendLoop();
  // Sends up to max_batch_lines buffered lines; on a transient failure puts them back.
  absl::Status SendBatch() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  CoordinatorClient* const client_;
  const std::function<std::string()> worker_id_;
  const std::string job_id_;
  const int attempt_;
  const int rank_;
  const JobLogOptions options_;
  const std::string prefix_;

  absl::Mutex mu_;
  std::deque<std::string> pending_ ABSL_GUARDED_BY(mu_);
  int64_t dropped_ ABSL_GUARDED_BY(mu_) = 0;
  bool closing_ ABSL_GUARDED_BY(mu_) = false;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status close_status_ ABSL_GUARDED_BY(mu_);
  std::thread sender_;
};

}  // namespace mimo::worker
