// Durable job storage in SQLite: jobs, their event history, per-rank logs, idempotency keys.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "mimo/v1/job.pb.h"
#include "mimo/v1/job_service.pb.h"

struct sqlite3;

namespace mimo::coordinator {

// One SQLite database (WAL mode, synchronous=FULL, schema versioned through `PRAGMA user_version`
// with forward-only migrations). Every method is thread-safe (calls are serialized on one
// connection) and every write is one transaction, so a process killed at any point loses nothing
// that a call reported as stored. Several processes may share the file.
class JobStore {
 public:
  // ListJobs' largest page.
  static constexpr int kMaxPageSize = 1000;

  struct Options {
    // Database file, created if absent (mode 0644 less the umask). ":memory:" for a private
    // in-memory database (tests).
    std::string path;
    // How long a write waits for another process's lock before failing.
    absl::Duration busy_timeout = absl::Seconds(5);
    // How long a SubmitJob request_id is remembered.
    absl::Duration request_id_ttl = absl::Hours(24);
  };

  // Opens (creating if needed) and migrates to the current schema. Fails on a database written
  // by a newer mimo (a schema version this code does not know).
  static absl::StatusOr<std::unique_ptr<JobStore>> Open(const Options& options);
  ~JobStore();

  // The schema version this code writes.
  static int CurrentSchemaVersion();

  struct Created {
    v1::Job job;
    bool created = false;  // False: request_id matched an earlier job, which is returned.
  };
  // Stores a new job in JOB_STATE_PENDING with attempt 1, id "j-YYYYMMDD-NNNNNN" (NNNNNN counts
  // up over the database's lifetime), create/update times `now`, and its first event (state
  // PENDING, message "submitted"). A non-empty request_id seen within request_id_ttl returns the
  // job created then instead, or AlreadyExists when that job's spec differs from `spec`.
  absl::StatusOr<Created> CreateJob(const v1::JobSpec& spec, const std::string& request_id,
                                    absl::Time now);

  // NotFound for an unknown id.
  absl::StatusOr<v1::Job> GetJob(const std::string& id);

  // Replaces the stored job (matched by job.id(); NotFound if absent) and appends `event` with the
  // next sequence number, in one transaction. Returns the event as stored.
  absl::StatusOr<v1::JobEvent> UpdateJob(const v1::Job& job, v1::JobEvent event);
  // Replaces the stored job without an event (NotFound if absent): for bookkeeping no one watches,
  // such as Job.succeeded_ranks.
  absl::Status SaveJob(const v1::Job& job);

  struct Page {
    std::vector<v1::Job> jobs;
    std::string next_page_token;  // Empty on the last page.
  };
  // Newest first (by creation order). page_size 0 means 50; negative or more than 1000 is
  // InvalidArgument; a malformed page_token is InvalidArgument. `states` empty means all. The page
  // ends early, with a next_page_token, before a job that would take its jobs' serialized size
  // (each as a field of a response: with its tag and length) past `max_bytes` (the first job is
  // always taken).
  absl::StatusOr<Page> ListJobs(int page_size, const std::string& page_token,
                                const std::vector<v1::JobState>& states,
                                size_t max_bytes = std::numeric_limits<size_t>::max());

  // Events of a job with sequence > after_sequence, in order, at most `limit` of them (0: all).
  // NotFound for an unknown job.
  absl::StatusOr<std::vector<v1::JobEvent>> ListEvents(const std::string& job_id,
                                                       int64_t after_sequence, int limit = 0);
  // The sequence number of a job's newest event (0 before its first); NotFound for an unknown
  // job. One indexed lookup, whatever the job's history.
  absl::StatusOr<int64_t> LastEventSequence(const std::string& job_id);

  // Appends log lines of one rank of one attempt; each gets the job's next log sequence number.
  // NotFound for an unknown job; InvalidArgument for attempt < 1 or rank < 0.
  absl::Status AppendLogs(const std::string& job_id, int attempt, int rank,
                          const std::vector<std::string>& lines, absl::Time time);

  struct LogQuery {
    std::string job_id;
    std::optional<int> rank;      // Unset: every rank.
    int attempt = 0;              // 0: the job's latest attempt.
    bool later_attempts = false;  // Also every later attempt's lines (a follow through restarts).
    int tail_lines = 0;           // > 0: only the last tail_lines matching lines.
    int64_t after_sequence = 0;   // > 0: only lines with a larger sequence (follow mode); then
                                  // tail_lines is ignored.
    int max_lines = 0;            // > 0, without tail_lines: at most this many, the oldest first
                                  // (a page; read on from the last one's sequence).
  };
  // Matching lines in sequence order. NotFound for an unknown job; InvalidArgument for a negative
  // attempt.
  absl::StatusOr<std::vector<v1::LogLine>> ReadLogs(const LogQuery& query);

  // Jobs in PENDING, SCHEDULED, RUNNING or CANCELLING, oldest first (for scheduling and for
  // reconciliation after a restart).
  absl::StatusOr<std::vector<v1::Job>> ListUnfinishedJobs();

  // Number of jobs in each state (states with none are absent).
  absl::StatusOr<std::map<v1::JobState, int64_t>> CountByState();

  // Forgets request ids recorded before `cutoff`.
  absl::Status PurgeRequestIds(absl::Time cutoff);

  // Deletes the jobs that ended (SUCCEEDED, FAILED or CANCELLED) and were last updated before
  // `cutoff`, with their events, logs and request ids, in transactions of up to 1000 jobs (a
  // job's rows go in one): GetJob then answers NotFound for them. Returns how many were deleted.
  absl::StatusOr<int64_t> DeleteFinishedJobs(absl::Time cutoff);

 private:
  explicit JobStore(sqlite3* db, Options options);
  sqlite3* db_;  // Owned; opened SQLITE_OPEN_NOMUTEX, so every use must hold mu_.
  const Options options_;
  absl::Mutex mu_;
};

}  // namespace mimo::coordinator
