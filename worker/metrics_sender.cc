// MetricsSender: the newest metrics report sent from a thread of its own.
#include "worker/metrics_sender.h"

#include <utility>

namespace mimo::worker {

MetricsSender::MetricsSender(Send send, OnError on_error)
    : send_(std::move(send)), on_error_(std::move(on_error)), thread_([this] { Run(); }) {}

MetricsSender::~MetricsSender() {
  Flush(kFlushTimeout);
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  thread_.join();
}

void MetricsSender::Post(v1::ReportMetricsRequest request) {
  absl::MutexLock lock(&mu_);
  pending_ = std::move(request);
}

bool MetricsSender::Flush(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !pending_ && !busy_; };
  return mu_.AwaitWithTimeout(absl::Condition(&idle), timeout);
}

void MetricsSender::Run() {
  while (true) {
    v1::ReportMetricsRequest request;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]()
                       ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return pending_.has_value() || stop_; };
      mu_.Await(absl::Condition(&ready));
      if (!pending_) return;  // Stopped with nothing left.
      request = *std::move(pending_);
      pending_.reset();
      busy_ = true;
    }
    const absl::Status status = send_(request);
    if (!status.ok()) on_error_(status);
    absl::MutexLock lock(&mu_);
    busy_ = false;
  }
}

}  // namespace mimo::worker
