// The coordinator's Prometheus metrics: jobs by state, workers, and per-method request counts and
// latencies, served on /metrics.
#include "coordinator/metrics.h"

#include <exception>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "coordinator/job_state.h"

namespace mimo::coordinator {

absl::StatusOr<std::unique_ptr<CoordinatorMetrics>> CoordinatorMetrics::Serve(
    const std::string& listen) {
  std::unique_ptr<CoordinatorMetrics> m(new CoordinatorMetrics());
  try {
    m->exposer_ = std::make_unique<prometheus::Exposer>(listen);
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("cannot serve metrics on ", listen, ": ", e.what()));
  }
  m->registry_ = std::make_shared<prometheus::Registry>();
  m->jobs_ = &prometheus::BuildGauge()
                  .Name("mimo_jobs")
                  .Help("Jobs known to the coordinator, by state")
                  .Register(*m->registry_);
  m->requests_ = &prometheus::BuildCounter()
                      .Name("mimo_grpc_requests_total")
                      .Help("Finished gRPC requests by method and status code")
                      .Register(*m->registry_);
  m->latency_ = &prometheus::BuildHistogram()
                     .Name("mimo_grpc_request_duration_seconds")
                     .Help("gRPC request latency by method (streams: until they end)")
                     .Register(*m->registry_);
  m->workers_ = &prometheus::BuildGauge()
                     .Name("mimo_workers")
                     .Help("Registered live workers")
                     .Register(*m->registry_)
                     .Add({});
  m->SetJobCounts({});
  m->exposer_->RegisterCollectable(m->registry_);
  return m;
}

int CoordinatorMetrics::port() const { return exposer_->GetListeningPorts().front(); }

void CoordinatorMetrics::ObserveRequest(const std::string& method, const std::string& code,
                                        double seconds) {
  requests_->Add({{"method", method}, {"code", code}}).Increment();
  static const prometheus::Histogram::BucketBoundaries kBuckets = {
      0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
  latency_->Add({{"method", method}}, kBuckets).Observe(seconds);
}

void CoordinatorMetrics::SetJobCounts(const std::map<v1::JobState, int64_t>& counts) {
  for (int s = v1::JOB_STATE_PENDING; s <= v1::JOB_STATE_CANCELLED; ++s) {
    const auto state = static_cast<v1::JobState>(s);
    auto it = counts.find(state);
    jobs_->Add({{"state", absl::AsciiStrToLower(StateName(state))}})
        .Set(it == counts.end() ? 0 : static_cast<double>(it->second));
  }
}

void CoordinatorMetrics::SetWorkers(int64_t registered) {
  workers_->Set(static_cast<double>(registered));
}

}  // namespace mimo::coordinator
