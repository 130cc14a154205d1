// Metrics reports sent from a thread of their own, so that a slow or unreachable coordinator
// never holds up a training step.
#pragma once

#include <functional>
#include <optional>
#include <thread>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "mimo/v1/worker_service.pb.h"

namespace mimo::worker {

// Reports are progress, not state: while one is in flight the newest waits, replacing any older
// one not sent yet, so a slow coordinator gets fewer reports, never a backlog. A failed send is
// passed to `on_error` (from the sender's thread) and not retried.
class MetricsSender {
 public:
  using Send = std::function<absl::Status(const v1::ReportMetricsRequest&)>;
  using OnError = std::function<void(const absl::Status&)>;

  MetricsSender(Send send, OnError on_error);
  // Sends what is pending, waiting for it at most `flush_timeout`, then stops the thread (a send
  // in flight past that is waited for: the client's call timeout bounds it).
  ~MetricsSender();
  MetricsSender(const MetricsSender&) = delete;
  MetricsSender& operator=(const MetricsSender&) = delete;

  // Queues `request` (replacing one not sent yet) and returns at once.
  void Post(v1::ReportMetricsRequest request);
  // Waits until nothing is pending or in flight, at most `timeout`; whether it got there.
  bool Flush(absl::Duration timeout);

  // How long the destructor waits for the last report.
  static constexpr absl::Duration kFlushTimeout = absl::Seconds(5);

 private:
  void Run();

  const Send send_;
  const OnError on_error_;
  absl::Mutex mu_;
  std::optional<v1::ReportMetricsRequest> pending_ ABSL_GUARDED_BY(mu_);
  bool busy_ ABSL_GUARDED_BY(mu_) = false;  // A send in flight.
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace mimo::worker
