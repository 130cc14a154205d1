// A job's log: lines go to stderr at once and to the coordinator in batches (ReportLogs).
#include "worker/job_log.h"

#include <cstdio>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace mimo::worker {
namespace {

// Errors worth retrying: the coordinator was unreachable or slow, not a refusal.
bool Transient(const absl::Status& status) {
  return absl::IsUnavailable(status) || absl::IsDeadlineExceeded(status);
}

}  // namespace

JobLog::JobLog(CoordinatorClient* client, std::function<std::string()> worker_id,
               std::string job_id, int attempt, int rank, JobLogOptions options)
    : client_(client),
      worker_id_(std::move(worker_id)),
      job_id_(std::move(job_id)),
      attempt_(attempt),
      rank_(rank),
      options_(options),
      prefix_(absl::StrCat("[", job_id_, "/", attempt_, " rank ", rank_, "] ")) {
  sender_ = std::thread([this] { SendLoop(); });
}

JobLog::~JobLog() { Close().IgnoreError(); }

void JobLog::Line(absl::string_view text) {
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (options_.echo_to_stderr) {
      // One write per line, so that lines of concurrent ranks (threads in tests) do not mix.
      const std::string out = absl::StrCat(prefix_, line, "\n");
      std::fwrite(out.data(), 1, out.size(), stderr);
    }
    absl::MutexLock lock(&mu_);
    if (closing_) continue;
    pending_.emplace_back(line);
    if (static_cast<int>(pending_.size()) > options_.max_buffered_lines) {
      pending_.pop_front();
      ++dropped_;
    }
  }
}

absl::Status JobLog::SendBatch() {
  std::vector<std::string> batch;
  if (dropped_ > 0) {
    batch.push_back(absl::StrCat("(", dropped_,
                                 " earlier log lines were dropped while the coordinator could not "
                                 "be reached)"));
  }
  while (!pending_.empty() && static_cast<int>(batch.size()) < options_.max_batch_lines) {
    batch.push_back(std::move(pending_.front()));
    pending_.pop_front();
  }
  if (batch.empty()) return absl::OkStatus();
  const int64_t dropped = dropped_;
  dropped_ = 0;
  v1::ReportLogsRequest request;
  request.set_job_id(job_id_);
  request.set_attempt(attempt_);
  request.set_rank(rank_);
  for (std::string& line : batch) request.add_lines(std::move(line));
  // The network call runs unlocked so that Line() never waits for it.
  mu_.Unlock();
  request.set_worker_id(worker_id_());
  const absl::Status status = client_->ReportLogs(request);
  mu_.Lock();
  if (Transient(status) && !closing_) {
    // Back to the front, in order, for the next try (the drop note is made again if needed).
    for (int i = request.lines_size() - 1; i >= (dropped > 0 ? 1 : 0); --i) {
      pending_.push_front(request.lines(i));
    }
    dropped_ += dropped;
    while (static_cast<int>(pending_.size()) > options_.max_buffered_lines) {
      pending_.pop_front();
      ++dropped_;
    }
  }
  return status;
}

void JobLog::SendLoop() {
  absl::MutexLock lock(&mu_);
  auto wake = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return closing_ || static_cast<int>(pending_.size()) >= options_.max_batch_lines;
  };
  while (true) {
    mu_.AwaitWithTimeout(absl::Condition(&wake), options_.flush_interval);
    if (closing_) break;
    const absl::Status status = SendBatch();
    if (!status.ok() && !Transient(status)) {
      // Refused (the rank is no longer bound to the attempt): nothing later would be accepted.
      std::fprintf(stderr, "%slog lines not sent: %s\n", prefix_.c_str(),
                   std::string(status.message()).c_str());
      pending_.clear();
    }
  }
  // Close(): one try per remaining batch.
  while (!pending_.empty() || dropped_ > 0) {
    const absl::Status status = SendBatch();
    if (!status.ok()) {
      close_status_ = status;
      pending_.clear();
      dropped_ = 0;
    }
  }
}

absl::Status JobLog::Close() {
  {
    absl::MutexLock lock(&mu_);
    if (closed_) return close_status_;
    closed_ = true;
    closing_ = true;
  }
  sender_.join();
  absl::MutexLock lock(&mu_);
  return close_status_;
}

}  // namespace mimo::worker
