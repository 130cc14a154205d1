// The coordinator's Prometheus metrics: jobs by state, workers, per-method request counts and
// latencies, and the running jobs' last training metrics, served on /metrics.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

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
  // Serves http://`listen`/metrics ("127.0.0.1:9464"; port 0 picks a free one; ":9464" is
  // 0.0.0.0:9464, every interface). Fails if the address cannot be bound.
  static absl::StatusOr<std::unique_ptr<CoordinatorMetrics>> Serve(const std::string& listen);

  // The bound port.
  int port() const;

  // One finished RPC: its method ("SubmitJob"), gRPC status code name ("OK") and duration.
  void ObserveRequest(const std::string& method, const std::string& code, double seconds);
  // Every state gets a value (0 when absent from `counts`).
  void SetJobCounts(const std::map<v1::JobState, int64_t>& counts);
  void SetWorkers(int64_t registered);
  // The last reported metrics of each running job (`jobs`), labelled by job id:
  // mimo_job_step, mimo_job_loss, mimo_job_tokens_per_second, mimo_job_tflops_per_gpu,
  // mimo_job_mfu, mimo_job_peak_memory_bytes and mimo_job_value{name} (aux_loss, grad_norm, lr,
  // expert_load_<e>, ...). A job's series go once it no longer runs.
  void SetRunningJobs(const std::vector<v1::Job>& jobs);

 private:
  CoordinatorMetrics() = default;

  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  prometheus::Family<prometheus::Gauge>* jobs_ = nullptr;
  prometheus::Family<prometheus::Counter>* requests_ = nullptr;
  prometheus::Family<prometheus::Histogram>* latency_ = nullptr;
  prometheus::Gauge* workers_ = nullptr;
  // mimo_job_<name> families by name, and the series of each job shown.
  std::map<std::string, prometheus::Family<prometheus::Gauge>*> training_;
  std::map<std::string,
           std::vector<std::pair<prometheus::Family<prometheus::Gauge>*, prometheus::Gauge*>>>
      shown_;
};

}  // namespace mimo::coordinator
