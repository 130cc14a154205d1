// GradientSync: ready counts per bucket, in-order starts, one communication thread.
#include "mimo/gradient_sync.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace mimo {

absl::StatusOr<std::unique_ptr<GradientSync>> GradientSync::Create(kernels::Ops& ops,
                                                                   std::vector<Bucket> buckets) {
  absl::flat_hash_map<const Parameter*, size_t> bucket_of;
  for (size_t i = 0; i < buckets.size(); ++i) {
    if (!buckets[i].collective) {
      return absl::InvalidArgumentError(
          absl::StrCat("GradientSync: bucket ", i, " has no collective"));
    }
    for (const Parameter* p : buckets[i].params) {
      if (!bucket_of.emplace(p, i).second) {
        return absl::InvalidArgumentError(
            absl::StrCat("GradientSync: parameter ", p->name(), " is in two buckets"));
      }
    }
  }
  return std::unique_ptr<GradientSync>(
      new GradientSync(ops, std::move(buckets), std::move(bucket_of)));
}

GradientSync::GradientSync(kernels::Ops& ops, std::vector<Bucket> buckets,
                           absl::flat_hash_map<const Parameter*, size_t> bucket_of)
    : ops_(ops), buckets_(std::move(buckets)), bucket_of_(std::move(bucket_of)) {
  for (const Bucket& b : buckets_) missing_.push_back(static_cast<int64_t>(b.params.size()));
  thread_ = std::thread([this] { Run(); });
}

GradientSync::~GradientSync() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    queue_.clear();
    stop_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

void GradientSync::Abandon() {
  {
    std::unique_lock<std::mutex> lock(mu_);
    queue_.clear();
    idle_.wait(lock, [this] { return !busy_; });
    error_ = absl::OkStatus();
  }
  Reset();
}

void GradientSync::Reset() {
  next_ = 0;
  started_early_ = 0;
  for (size_t i = 0; i < buckets_.size(); ++i) {
    missing_[i] = static_cast<int64_t>(buckets_[i].params.size());
  }
  reported_.clear();
}

absl::Status GradientSync::Ready(const std::vector<Parameter*>& params) {
  for (Parameter* p : params) {
    auto it = bucket_of_.find(p);
    if (it == bucket_of_.end()) continue;
    MIMO_RETURN_IF_ERROR(p->ZeroGradIfStale(ops_));  // Ready, though no backward wrote it.
    if (reported_[p]) {
      return absl::InternalError(
          absl::StrCat("GradientSync: the gradient of ", p->name(), " was reported ready twice"));
    }
    reported_[p] = true;
    --missing_[it->second];
  }
  size_t end = next_;
  while (end < buckets_.size() && missing_[end] == 0) ++end;
  if (end == next_) {
    std::lock_guard<std::mutex> lock(mu_);
    return error_;
  }
  started_early_ += static_cast<int64_t>(end - next_);
  return Start(end);
}

absl::Status GradientSync::Start(size_t end) {
  MIMO_ASSIGN_OR_RETURN(std::unique_ptr<kernels::Event> event, ops_.RecordEvent());
  std::shared_ptr<kernels::Event> shared = std::move(event);  // One for the lot.
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (; next_ < end; ++next_) queue_.push_back({.event = shared, .bucket = next_});
    if (!error_.ok()) return error_;
  }
  wake_.notify_one();
  return absl::OkStatus();
}

absl::Status GradientSync::Finish() {
  const int64_t early = started_early_;
  absl::Status status;
  for (size_t i = next_; i < buckets_.size() && status.ok(); ++i) {
    for (Parameter* p : buckets_[i].params) {
      status.Update(p->ZeroGradIfStale(ops_));  // Unused this step.
    }
  }
  if (status.ok() && next_ < buckets_.size()) status = Start(buckets_.size());
  absl::Status error;
  {
    std::unique_lock<std::mutex> lock(mu_);
    idle_.wait(lock, [this] { return queue_.empty() && !busy_; });
    error = std::exchange(error_, absl::OkStatus());
  }
  Reset();
  last_started_early_ = early;
  if (!error.ok()) return error;
  return status;
}

void GradientSync::Run() {
  // Every CUDA and NCCL call of this thread is for the backward's device.
  if (absl::Status status = ops_.UseDeviceOnThisThread(); !status.ok()) {
    std::lock_guard<std::mutex> lock(mu_);
    error_ = status;
  }
  for (;;) {
    Task task;
    {
      std::unique_lock<std::mutex> lock(mu_);
      wake_.wait(lock, [this] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;  // Stopping, nothing left.
      task = std::move(queue_.front());
      queue_.pop_front();
      busy_ = true;
      if (!error_.ok()) {  // After a failure the rest of the step's buckets are dropped.
        busy_ = false;
        if (queue_.empty()) idle_.notify_all();
        continue;
      }
    }
    absl::Status status = task.event->Wait();
    if (status.ok()) status = buckets_[task.bucket].collective();
    std::lock_guard<std::mutex> lock(mu_);
    if (!status.ok() && error_.ok()) {
      error_ = absl::Status(status.code(), absl::StrCat("gradient reduction of bucket ",
                                                        task.bucket, ": ", status.message()));
    }
    busy_ = false;
    if (queue_.empty()) idle_.notify_all();
  }
}

}  // namespace mimo
