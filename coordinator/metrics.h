// The coordinator's Prometheus metrics: jobs by state, workers, and per-method request counts and
// latencies, served on /metrics.
#pragma once

#include <map>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "mimo/v1/job.pb.h"
#include "prometheus/counter.h"
#include "prometheus/exposer.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace mimo::coordinator {

class CoordinatorMetrics {
 public:
  // Serves http://`listen`/metrics ("127.0.0.1:9464"; port 0 picks a free one). Fails if the
  // address cannot be bound.
  static absl::StatusOr<std::unique_ptr<CoordinatorMetrics>> Serve(const std::string& listen);

  // The bound port.
  int port() const;

  // One finished RPC: its method ("SubmitJob"), gRPC status code name ("OK") and duration.
  void ObserveRequest(const std::string& method, const std::string& code, double seconds);
  // Every state gets a value (0 when absent from `counts`).
  void SetJobCounts(const std::map<v1::JobState, int64_t>& counts);
  void SetWorkers(int64_t registered);

 private:
  CoordinatorMetrics() = default;

  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  prometheus::Family<prometheus::Gauge>* jobs_ = nullptr;
  prometheus::Family<prometheus::Counter>* requests_ = nullptr;
  prometheus::Family<prometheus::Histogram>* latency_ = nullptr;
  prometheus::Gauge* workers_ = nullptr;
};

}  // namespace mimo::coordinator
