// Durable job storage in SQLite: schema migrations and the queries.
#include "coordinator/job_store.h"

#include <google/protobuf/util/message_differencer.h>
#include <sqlite3.h>

#include <algorithm>
#include <climits>
#include <iterator>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "common/status_macros.h"
#include "coordinator/sqlite.h"

namespace mimo::coordinator {
namespace {

using sqlite::Exec;
using sqlite::SqliteError;
using sqlite::Statement;
using sqlite::Transaction;

constexpr int kDefaultPageSize = 50;

// Migration i (1-based) takes the schema from user_version i - 1 to i. Times are Unix nanoseconds;
// `job` and `event` hold serialized mimo.v1.Job and mimo.v1.JobEvent. jobs.id is NULL only inside
// the CreateJob transaction that assigns it from the row's seq.
constexpr const char* kMigrations[] = {
    R"sql(
CREATE TABLE jobs (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT UNIQUE,
  state INTEGER NOT NULL,
  create_time INTEGER NOT NULL,
  update_time INTEGER NOT NULL,
  request_id TEXT NOT NULL,
  job BLOB NOT NULL
);
CREATE INDEX jobs_by_state ON jobs (state, seq);
CREATE TABLE job_events (
  job_id TEXT NOT NULL REFERENCES jobs (id),
  sequence INTEGER NOT NULL,
  time INTEGER NOT NULL,
  event BLOB NOT NULL,
  PRIMARY KEY (job_id, sequence)
) WITHOUT ROWID;
CREATE TABLE job_logs (
  job_id TEXT NOT NULL REFERENCES jobs (id),
  sequence INTEGER NOT NULL,
  attempt INTEGER NOT NULL,
  rank INTEGER NOT NULL,
  time INTEGER NOT NULL,
  text TEXT NOT NULL,
  PRIMARY KEY (job_id, sequence)
) WITHOUT ROWID;
CREATE TABLE request_ids (
  request_id TEXT PRIMARY KEY,
  job_id TEXT NOT NULL REFERENCES jobs (id),
  time INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX request_ids_by_time ON request_ids (time);
)sql",
};

google::protobuf::Timestamp ToProto(absl::Time time) {
  const int64_t seconds = absl::ToUnixSeconds(time);  // Rounds toward the past.
  google::protobuf::Timestamp proto;
  proto.set_seconds(seconds);
  proto.set_nanos(
      static_cast<int32_t>(absl::ToInt64Nanoseconds(time - absl::FromUnixSeconds(seconds))));
  return proto;
}

int64_t ToNanos(const google::protobuf::Timestamp& proto) {
  return absl::ToUnixNanos(absl::FromUnixSeconds(proto.seconds()) +
                           absl::Nanoseconds(proto.nanos()));
}

// "j-20261123-000042" for the 42nd job, created on 2026-11-23 UTC.
std::string FormatJobId(absl::Time now, int64_t seq) {
  return absl::StrFormat("j-%s-%06d", absl::FormatTime("%Y%m%d", now, absl::UTCTimeZone()), seq);
}

// The single integer that `sql` returns, with ?1 bound to `key` when given.
absl::StatusOr<int64_t> QueryInt(sqlite3* db, absl::string_view sql,
                                 std::optional<absl::string_view> key = std::nullopt) {
  MIMO_ASSIGN_OR_RETURN(Statement stmt, Statement::Prepare(db, sql));
  if (key.has_value()) stmt.Bind(1, *key);
  MIMO_ASSIGN_OR_RETURN(const bool row, stmt.Step());
  if (!row) return absl::InternalError(absl::StrCat("\"", sql, "\" returned no row"));
  return stmt.Int(0);
}

absl::Status CheckJobExists(sqlite3* db, absl::string_view job_id) {
  MIMO_ASSIGN_OR_RETURN(const int64_t count,
                        QueryInt(db, "SELECT COUNT(*) FROM jobs WHERE id = ?1", job_id));
  if (count == 0) return absl::NotFoundError(absl::StrCat("job ", job_id, " not found"));
  return absl::OkStatus();
}

absl::StatusOr<v1::Job> ParseJob(const std::string& bytes, absl::string_view where) {
  v1::Job job;
  if (!job.ParseFromString(bytes)) {
    return absl::DataLossError(absl::StrCat("stored job ", where, " does not parse"));
  }
  return job;
}

absl::StatusOr<v1::Job> LoadJob(sqlite3* db, absl::string_view id) {
  MIMO_ASSIGN_OR_RETURN(Statement stmt,
                        Statement::Prepare(db, "SELECT job FROM jobs WHERE id = ?1"));
  stmt.Bind(1, id);
  MIMO_ASSIGN_OR_RETURN(const bool row, stmt.Step());
  if (!row) return absl::NotFoundError(absl::StrCat("job ", id, " not found"));
  return ParseJob(stmt.Blob(0), id);
}

// Rows of (seq, job), in the statement's order.
struct JobRow {
  int64_t seq;
  v1::Job job;
};
absl::StatusOr<std::vector<JobRow>> ReadJobRows(Statement& stmt) {
  std::vector<JobRow> rows;
  while (true) {
    MIMO_ASSIGN_OR_RETURN(const bool row, stmt.Step());
    if (!row) return rows;
    MIMO_ASSIGN_OR_RETURN(v1::Job job,
                          ParseJob(stmt.Blob(1), absl::StrCat("at seq ", stmt.Int(0))));
    rows.push_back({stmt.Int(0), std::move(job)});
  }
}

// Binds ?1..?5 of an INSERT or UPDATE of jobs to the queryable columns and the blob.
void BindJobColumns(Statement& stmt, const v1::Job& job) {
  stmt.Bind(1, job.state())
      .Bind(2, ToNanos(job.create_time()))
      .Bind(3, ToNanos(job.update_time()))
      .Bind(4, job.request_id())
      .BindBlob(5, job.SerializeAsString());
}

// Inserts `job` and assigns its id from the new row's seq.
absl::Status InsertJob(sqlite3* db, absl::Time now, v1::Job& job) {
  MIMO_ASSIGN_OR_RETURN(
      Statement insert,
      Statement::Prepare(db,
                         "INSERT INTO jobs (state, create_time, update_time, request_id, job) "
                         "VALUES (?1, ?2, ?3, ?4, ?5)"));
  BindJobColumns(insert, job);
  MIMO_RETURN_IF_ERROR(insert.Run());
  const int64_t seq = sqlite3_last_insert_rowid(db);
  job.set_id(FormatJobId(now, seq));
  MIMO_ASSIGN_OR_RETURN(Statement update,
                        Statement::Prepare(db, "UPDATE jobs SET id = ?1, job = ?2 WHERE seq = ?3"));
  update.Bind(1, job.id()).BindBlob(2, job.SerializeAsString()).Bind(3, seq);
  return update.Run();
}

absl::Status ReplaceJob(sqlite3* db, const v1::Job& job) {
  MIMO_ASSIGN_OR_RETURN(
      Statement stmt,
      Statement::Prepare(db,
                         "UPDATE jobs SET state = ?1, create_time = ?2, update_time = ?3, "
                         "request_id = ?4, job = ?5 WHERE id = ?6"));
  BindJobColumns(stmt, job);
  stmt.Bind(6, job.id());
  MIMO_RETURN_IF_ERROR(stmt.Run());
  if (sqlite3_changes(db) == 0) {
    return absl::NotFoundError(absl::StrCat("job ", job.id(), " not found"));
  }
  return absl::OkStatus();
}

// Sets the event's sequence to the job's next one and stores it.
absl::Status AppendEvent(sqlite3* db, absl::string_view job_id, v1::JobEvent& event) {
  MIMO_ASSIGN_OR_RETURN(
      const int64_t last,
      QueryInt(db, "SELECT COALESCE(MAX(sequence), 0) FROM job_events WHERE job_id = ?1", job_id));
  event.set_sequence(last + 1);
  MIMO_ASSIGN_OR_RETURN(
      Statement stmt,
      Statement::Prepare(
          db, "INSERT INTO job_events (job_id, sequence, time, event) VALUES (?1, ?2, ?3, ?4)"));
  stmt.Bind(1, job_id)
      .Bind(2, event.sequence())
      .Bind(3, ToNanos(event.time()))
      .BindBlob(4, event.SerializeAsString());
  return stmt.Run();
}

// The job that `request_id` created after `cutoff`, if any.
absl::StatusOr<std::optional<std::string>> FindRequest(sqlite3* db, absl::string_view request_id,
                                                       absl::Time cutoff) {
  MIMO_ASSIGN_OR_RETURN(
      Statement stmt,
      Statement::Prepare(db, "SELECT job_id FROM request_ids WHERE request_id = ?1 AND time > ?2"));
  stmt.Bind(1, request_id).Bind(2, absl::ToUnixNanos(cutoff));
  MIMO_ASSIGN_OR_RETURN(const bool row, stmt.Step());
  if (!row) return std::nullopt;
  return stmt.Text(0);
}

absl::Status RememberRequest(sqlite3* db, absl::string_view request_id, absl::string_view job_id,
                             absl::Time now) {
  MIMO_ASSIGN_OR_RETURN(
      Statement stmt,
      Statement::Prepare(
          db, "INSERT OR REPLACE INTO request_ids (request_id, job_id, time) VALUES (?1, ?2, ?3)"));
  stmt.Bind(1, request_id).Bind(2, job_id).Bind(3, absl::ToUnixNanos(now));
  return stmt.Run();
}

v1::Job NewJob(const v1::JobSpec& spec, const std::string& request_id, absl::Time now) {
  v1::Job job;
  *job.mutable_spec() = spec;
  job.set_state(v1::JOB_STATE_PENDING);
  *job.mutable_create_time() = ToProto(now);
  *job.mutable_update_time() = ToProto(now);
  job.set_attempt(1);
  job.set_request_id(request_id);
  return job;
}

v1::JobEvent SubmittedEvent(absl::Time now) {
  v1::JobEvent event;
  *event.mutable_time() = ToProto(now);
  event.set_state(v1::JOB_STATE_PENDING);
  event.set_message("submitted");
  return event;
}

// The current row of "SELECT sequence, attempt, rank, time, text FROM job_logs ...".
v1::LogLine ReadLogLine(const Statement& stmt) {
  v1::LogLine line;
  line.set_sequence(stmt.Int(0));
  line.set_attempt(static_cast<int32_t>(stmt.Int(1)));
  line.set_rank(static_cast<int32_t>(stmt.Int(2)));
  *line.mutable_time() = ToProto(absl::FromUnixNanos(stmt.Int(3)));
  line.set_text(stmt.Text(4));
  return line;
}

// The seq below which the page starts: every job for an empty token.
absl::StatusOr<int64_t> DecodePageToken(const std::string& token) {
  if (token.empty()) return INT64_MAX;
  int64_t seq = 0;
  if (!std::all_of(token.begin(), token.end(), absl::ascii_isdigit) ||
      !absl::SimpleAtoi(token, &seq) || seq <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("malformed page_token \"", token, "\""));
  }
  return seq;
}

// "SELECT ... WHERE seq < ?1 AND state IN (?3, ?4) ORDER BY seq DESC LIMIT ?2" for two states.
std::string ListJobsSql(size_t state_count) {
  std::string sql = "SELECT seq, job FROM jobs WHERE seq < ?1";
  for (size_t i = 0; i < state_count; ++i) {
    absl::StrAppend(&sql, i == 0 ? " AND state IN (" : ", ", "?", i + 3);
  }
  absl::StrAppend(&sql, state_count > 0 ? ")" : "", " ORDER BY seq DESC LIMIT ?2");
  return sql;
}

// FailedPrecondition for a database written by a newer mimo.
absl::Status CheckKnownVersion(int64_t version) {
  if (version <= JobStore::CurrentSchemaVersion()) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat("job database has schema version ", version,
                                                    " but this mimo knows only ", "versions up to ",
                                                    JobStore::CurrentSchemaVersion()));
}

absl::Status ApplyMigration(sqlite3* db, int version) {
  MIMO_ASSIGN_OR_RETURN(Transaction tx, Transaction::Begin(db, Transaction::Kind::kWrite));
  MIMO_ASSIGN_OR_RETURN(const int64_t current, QueryInt(db, "PRAGMA user_version"));
  MIMO_RETURN_IF_ERROR(CheckKnownVersion(current));
  if (current >= version) return tx.Commit();  // Another process migrated first.
  MIMO_RETURN_IF_ERROR(Exec(db, kMigrations[version - 1]));
  // PRAGMA arguments cannot be bound; `version` is this code's own constant.
  MIMO_RETURN_IF_ERROR(Exec(db, absl::StrCat("PRAGMA user_version = ", version).c_str()));
  return tx.Commit();
}

absl::Status Migrate(sqlite3* db) {
  MIMO_ASSIGN_OR_RETURN(const int64_t version, QueryInt(db, "PRAGMA user_version"));
  MIMO_RETURN_IF_ERROR(CheckKnownVersion(version));
  for (int next = static_cast<int>(version) + 1; next <= JobStore::CurrentSchemaVersion(); ++next) {
    MIMO_RETURN_IF_ERROR(ApplyMigration(db, next));
  }
  return absl::OkStatus();
}

// WAL lets readers proceed during a write; it is persistent and applies to file databases only.
absl::Status EnableWal(sqlite3* db) {
  const char* file = sqlite3_db_filename(db, "main");
  if (file == nullptr || file[0] == '\0') return absl::OkStatus();
  MIMO_ASSIGN_OR_RETURN(Statement stmt, Statement::Prepare(db, "PRAGMA journal_mode = WAL"));
  MIMO_ASSIGN_OR_RETURN(const bool row, stmt.Step());
  if (!row || stmt.Text(0) != "wal") {
    return absl::FailedPreconditionError(absl::StrCat("cannot put ", file, " in WAL mode"));
  }
  return absl::OkStatus();
}

absl::Status Configure(sqlite3* db, absl::Duration busy_timeout) {
  const int64_t ms = std::clamp<int64_t>(absl::ToInt64Milliseconds(busy_timeout), 0, INT_MAX);
  const int rc = sqlite3_busy_timeout(db, static_cast<int>(ms));
  if (rc != SQLITE_OK) return SqliteError(db, rc, "busy_timeout");
  MIMO_RETURN_IF_ERROR(EnableWal(db));
  MIMO_RETURN_IF_ERROR(Exec(db, "PRAGMA synchronous = FULL"));
  return Exec(db, "PRAGMA foreign_keys = ON");
}

struct CloseDb {
  void operator()(sqlite3* db) const { sqlite3_close(db); }
};

}  // namespace

int JobStore::CurrentSchemaVersion() { return static_cast<int>(std::size(kMigrations)); }

absl::StatusOr<std::unique_ptr<JobStore>> JobStore::Open(const Options& options) {
  if (options.path.empty()) return absl::InvalidArgumentError("JobStore needs a database path");
  // NOMUTEX: the connection is only used under mu_, so SQLite's own locking would be redundant.
  sqlite3* raw = nullptr;
  const int rc =
      sqlite3_open_v2(options.path.c_str(), &raw,
                      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
  std::unique_ptr<sqlite3, CloseDb> db(raw);
  if (rc != SQLITE_OK) return SqliteError(raw, rc, absl::StrCat("open ", options.path));
  MIMO_RETURN_IF_ERROR(Configure(db.get(), options.busy_timeout));
  MIMO_RETURN_IF_ERROR(Migrate(db.get()));
  return std::unique_ptr<JobStore>(new JobStore(db.release(), options));
}

JobStore::JobStore(sqlite3* db, Options options) : db_(db), options_(std::move(options)) {}

JobStore::~JobStore() { sqlite3_close(db_); }

absl::StatusOr<JobStore::Created> JobStore::CreateJob(const v1::JobSpec& spec,
                                                      const std::string& request_id,
                                                      absl::Time now) {
  absl::MutexLock lock(&mu_);
  MIMO_ASSIGN_OR_RETURN(Transaction tx, Transaction::Begin(db_, Transaction::Kind::kWrite));
  if (!request_id.empty()) {
    MIMO_ASSIGN_OR_RETURN(const std::optional<std::string> earlier,
                          FindRequest(db_, request_id, now - options_.request_id_ttl));
    if (earlier.has_value()) {
      MIMO_ASSIGN_OR_RETURN(v1::Job job, LoadJob(db_, *earlier));
      MIMO_RETURN_IF_ERROR(tx.Commit());
      // A retry must be the same request; a reused key on another spec is a client bug that
      // would otherwise silently drop the new job.
      if (!google::protobuf::util::MessageDifferencer::Equals(job.spec(), spec)) {
        return absl::AlreadyExistsError(
            absl::StrCat("request_id \"", request_id, "\" was already used for job ", job.id(),
                         " with a different spec; use a new request_id for a new job"));
      }
      return Created{std::move(job), false};
    }
  }
  v1::Job job = NewJob(spec, request_id, now);
  MIMO_RETURN_IF_ERROR(InsertJob(db_, now, job));
  v1::JobEvent event = SubmittedEvent(now);
  MIMO_RETURN_IF_ERROR(AppendEvent(db_, job.id(), event));
  if (!request_id.empty()) MIMO_RETURN_IF_ERROR(RememberRequest(db_, request_id, job.id(), now));
  MIMO_RETURN_IF_ERROR(tx.Commit());
  return Created{std::move(job), true};
}

absl::StatusOr<v1::Job> JobStore::GetJob(const std::string& id) {
  absl::MutexLock lock(&mu_);
  return LoadJob(db_, id);
}

absl::StatusOr<v1::JobEvent> JobStore::UpdateJob(const v1::Job& job, v1::JobEvent event) {
  absl::MutexLock lock(&mu_);
  MIMO_ASSIGN_OR_RETURN(Transaction tx, Transaction::Begin(db_, Transaction::Kind::kWrite));
  MIMO_RETURN_IF_ERROR(ReplaceJob(db_, job));
  if (!event.has_time()) *event.mutable_time() = job.update_time();
  MIMO_RETURN_IF_ERROR(AppendEvent(db_, job.id(), event));
  MIMO_RETURN_IF_ERROR(tx.Commit());
  return event;
}

absl::Status JobStore::SaveJob(const v1::Job& job) {
  absl::MutexLock lock(&mu_);
  MIMO_ASSIGN_OR_RETURN(Transaction tx, Transaction::Begin(db_, Transaction::Kind::kWrite));
  MIMO_RETURN_IF_ERROR(ReplaceJob(db_, job));
  return tx.Commit();
}

absl::StatusOr<JobStore::Page> JobStore::ListJobs(int page_size, const std::string& page_token,
                                                  const std::vector<v1::JobState>& states,
                                                  size_t max_bytes) {
  if (page_size < 0 || page_size > kMaxPageSize) {
    return absl::InvalidArgumentError(
        absl::StrCat("page_size ", page_size, " is outside [0, ", kMaxPageSize, "]"));
  }
  if (page_size == 0) page_size = kDefaultPageSize;
  MIMO_ASSIGN_OR_RETURN(const int64_t before, DecodePageToken(page_token));
  absl::MutexLock lock(&mu_);
  MIMO_ASSIGN_OR_RETURN(Statement stmt, Statement::Prepare(db_, ListJobsSql(states.size())));
  // One row more than the page tells whether another page follows.
  stmt.Bind(1, before).Bind(2, page_size + 1);
  for (size_t i = 0; i < states.size(); ++i) stmt.Bind(static_cast<int>(i) + 3, states[i]);
  // Rows are read one at a time, so that a page cut short by max_bytes is all that is held.
  Page page;
  size_t bytes = 0;
  int64_t last_seq = 0;
  while (true) {
    MIMO_ASSIGN_OR_RETURN(const bool row, stmt.Step());
    if (!row) break;
    const int64_t seq = stmt.Int(0);
    if (page.jobs.size() == static_cast<size_t>(page_size)) {
      page.next_page_token = absl::StrCat(last_seq);
      break;
    }
    MIMO_ASSIGN_OR_RETURN(v1::Job job, ParseJob(stmt.Blob(1), absl::StrCat("at seq ", seq)));
    // The job as a repeated field of the response: its bytes, a tag and a length of up to 5.
    bytes += job.ByteSizeLong() + 6;
    if (!page.jobs.empty() && bytes > max_bytes) {
      page.next_page_token = absl::StrCat(last_seq);
      break;
    }
    last_seq = seq;
    page.jobs.push_back(std::move(job));
  }
  return page;
}

absl::StatusOr<std::vector<v1::JobEvent>> JobStore::ListEvents(const std::string& job_id,
                                                               int64_t after_sequence, int limit) {
  absl::MutexLock lock(&mu_);
  MIMO_ASSIGN_OR_RETURN(Transaction tx, Transaction::Begin(db_, Transaction::Kind::kRead));
  MIMO_RETURN_IF_ERROR(CheckJobExists(db_, job_id));
  MIMO_ASSIGN_OR_RETURN(
      Statement stmt,
      Statement::Prepare(db_,
                         "SELECT event FROM job_events WHERE job_id = ?1 AND sequence > ?2 "
                         "ORDER BY sequence LIMIT ?3"));
  // SQLite reads a negative LIMIT as no limit.
  stmt.Bind(1, job_id).Bind(2, after_sequence).Bind(3, limit > 0 ? limit : -1);
  std::vector<v1::JobEvent> events;
  while (true) {
    MIMO_ASSIGN_OR_RETURN(const bool row, stmt.Step());
    if (!row) break;
    if (!events.emplace_back().ParseFromString(stmt.Blob(0))) {
      return absl::DataLossError(absl::StrCat("stored event of job ", job_id, " does not parse"));
    }
  }
  MIMO_RETURN_IF_ERROR(tx.Commit());
  return events;
}

absl::StatusOr<int64_t> JobStore::LastEventSequence(const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  MIMO_ASSIGN_OR_RETURN(Transaction tx, Transaction::Begin(db_, Transaction::Kind::kRead));
  MIMO_RETURN_IF_ERROR(CheckJobExists(db_, job_id));
  MIMO_ASSIGN_OR_RETURN(
      Statement stmt,
      Statement::Prepare(db_,
                         "SELECT COALESCE(MAX(sequence), 0) FROM job_events WHERE job_id = ?1"));
  stmt.Bind(1, job_id);
  MIMO_ASSIGN_OR_RETURN(const bool row, stmt.Step());
  const int64_t sequence = row ? stmt.Int(0) : 0;
  MIMO_RETURN_IF_ERROR(tx.Commit());
  return sequence;
}

absl::Status JobStore::AppendLogs(const std::string& job_id, int attempt, int rank,
                                  const std::vector<std::string>& lines, absl::Time time) {
  if (attempt < 1 || rank < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("log lines need attempt >= 1 and rank >= 0, got ", attempt, " and ", rank));
  }
  absl::MutexLock lock(&mu_);
  MIMO_ASSIGN_OR_RETURN(Transaction tx, Transaction::Begin(db_, Transaction::Kind::kWrite));
  MIMO_RETURN_IF_ERROR(CheckJobExists(db_, job_id));
  MIMO_ASSIGN_OR_RETURN(
      int64_t sequence,
      QueryInt(db_, "SELECT COALESCE(MAX(sequence), 0) FROM job_logs WHERE job_id = ?1", job_id));
  MIMO_ASSIGN_OR_RETURN(
      Statement stmt,
      Statement::Prepare(db_,
                         "INSERT INTO job_logs (job_id, sequence, attempt, rank, time, text) "
                         "VALUES (?1, ?2, ?3, ?4, ?5, ?6)"));
  for (const std::string& line : lines) {
    stmt.Bind(1, job_id)
        .Bind(2, ++sequence)
        .Bind(3, attempt)
        .Bind(4, rank)
        .Bind(5, absl::ToUnixNanos(time))
        .Bind(6, line);
    MIMO_RETURN_IF_ERROR(stmt.Run());
    stmt.Reset();
  }
  return tx.Commit();
}

absl::StatusOr<std::vector<v1::LogLine>> JobStore::ReadLogs(const LogQuery& query) {
  if (query.attempt < 0) {
    return absl::InvalidArgumentError(absl::StrCat("attempt ", query.attempt, " is negative"));
  }
  absl::MutexLock lock(&mu_);
  MIMO_ASSIGN_OR_RETURN(Transaction tx, Transaction::Begin(db_, Transaction::Kind::kRead));
  MIMO_ASSIGN_OR_RETURN(const v1::Job job, LoadJob(db_, query.job_id));
  const bool tail = query.after_sequence <= 0 && query.tail_lines > 0;
  // A tail newest first so that LIMIT keeps it, a page oldest first; -1 is no limit.
  MIMO_ASSIGN_OR_RETURN(
      Statement stmt,
      Statement::Prepare(db_, tail
                                  ? "SELECT sequence, attempt, rank, time, text FROM job_logs "
                                    "WHERE job_id = ?1 AND (attempt = ?2 OR (?6 AND attempt > ?2)) "
                                    "AND (?3 IS NULL OR rank = ?3) AND sequence > ?4 "
                                    "ORDER BY sequence DESC LIMIT ?5"
                                  : "SELECT sequence, attempt, rank, time, text FROM job_logs "
                                    "WHERE job_id = ?1 AND (attempt = ?2 OR (?6 AND attempt > ?2)) "
                                    "AND (?3 IS NULL OR rank = ?3) AND sequence > ?4 "
                                    "ORDER BY sequence LIMIT ?5"));
  stmt.Bind(1, query.job_id)
      .Bind(2, query.attempt > 0 ? query.attempt : job.attempt())
      .Bind(4, query.after_sequence)
      .Bind(5, tail                  ? query.tail_lines
               : query.max_lines > 0 ? query.max_lines
                                     : -1)
      .Bind(6, query.later_attempts ? 1 : 0);
  if (query.rank.has_value()) {
    stmt.Bind(3, *query.rank);
  } else {
    stmt.BindNull(3);
  }
  std::vector<v1::LogLine> lines;
  while (true) {
    MIMO_ASSIGN_OR_RETURN(const bool row, stmt.Step());
    if (!row) break;
    lines.push_back(ReadLogLine(stmt));
  }
  MIMO_RETURN_IF_ERROR(tx.Commit());
  if (tail) std::reverse(lines.begin(), lines.end());
  return lines;
}

absl::StatusOr<std::vector<v1::Job>> JobStore::ListUnfinishedJobs() {
  absl::MutexLock lock(&mu_);
  MIMO_ASSIGN_OR_RETURN(
      Statement stmt,
      Statement::Prepare(db_,
                         "SELECT seq, job FROM jobs WHERE state IN (?1, ?2, ?3, ?4) ORDER BY seq"));
  stmt.Bind(1, v1::JOB_STATE_PENDING)
      .Bind(2, v1::JOB_STATE_SCHEDULED)
      .Bind(3, v1::JOB_STATE_RUNNING)
      .Bind(4, v1::JOB_STATE_CANCELLING);
  MIMO_ASSIGN_OR_RETURN(std::vector<JobRow> rows, ReadJobRows(stmt));
  std::vector<v1::Job> jobs;
  for (JobRow& row : rows) jobs.push_back(std::move(row.job));
  return jobs;
}

absl::StatusOr<std::map<v1::JobState, int64_t>> JobStore::CountByState() {
  absl::MutexLock lock(&mu_);
  MIMO_ASSIGN_OR_RETURN(Statement stmt,
                        Statement::Prepare(db_, "SELECT state, COUNT(*) FROM jobs GROUP BY state"));
  std::map<v1::JobState, int64_t> counts;
  while (true) {
    MIMO_ASSIGN_OR_RETURN(const bool row, stmt.Step());
    if (!row) return counts;
    counts[static_cast<v1::JobState>(stmt.Int(0))] = stmt.Int(1);
  }
}

absl::Status JobStore::PurgeRequestIds(absl::Time cutoff) {
  absl::MutexLock lock(&mu_);
  MIMO_ASSIGN_OR_RETURN(Statement stmt,
                        Statement::Prepare(db_, "DELETE FROM request_ids WHERE time < ?1"));
  stmt.Bind(1, absl::ToUnixNanos(cutoff));
  return stmt.Run();
}

absl::StatusOr<int64_t> JobStore::DeleteFinishedJobs(absl::Time cutoff) {
  // Jobs at most this many per transaction: a first purge of a large database does not hold the
  // database (and the store's lock) for one long transaction.
  constexpr int kBatch = 1000;
  const std::string finished = absl::StrCat(
      "SELECT id FROM jobs WHERE state IN (", static_cast<int>(v1::JOB_STATE_SUCCEEDED), ", ",
      static_cast<int>(v1::JOB_STATE_FAILED), ", ", static_cast<int>(v1::JOB_STATE_CANCELLED),
      ") AND update_time < ?1 ORDER BY seq LIMIT ", kBatch);
  int64_t total = 0;
  while (true) {
    absl::MutexLock lock(&mu_);
    MIMO_ASSIGN_OR_RETURN(Transaction tx, Transaction::Begin(db_, Transaction::Kind::kWrite));
    // The rows that refer to a job go first (the foreign keys are enforced).
    for (const char* table : {"job_logs", "job_events", "request_ids", "jobs"}) {
      MIMO_ASSIGN_OR_RETURN(
          Statement stmt,
          Statement::Prepare(db_, absl::StrCat("DELETE FROM ", table, " WHERE ",
                                               std::string(table) == "jobs" ? "id" : "job_id",
                                               " IN (", finished, ")")));
      stmt.Bind(1, absl::ToUnixNanos(cutoff));
      MIMO_RETURN_IF_ERROR(stmt.Run());
    }
    const int64_t deleted = sqlite3_changes(db_);
    MIMO_RETURN_IF_ERROR(tx.Commit());
    total += deleted;
    if (deleted < kBatch) return total;
  }
}

}  // namespace mimo::coordinator
