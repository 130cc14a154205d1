// The coordinator's Prometheus metrics: jobs by state, workers, and per-method request counts and
// latencies, served on /metrics.
#include "coordinator/metrics.h"

#include <exception>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "coordinator/job_state.h"

namespace mimo::coordinator {

absl::StatusOr<std::unique_ptr<CoordinatorMetrics>> CoordinatorMetrics::Serve(
    const std::string& listen) {
  std::unique_ptr<CoordinatorMetrics> m(new CoordinatorMetrics());
  try {
    // civetweb, under prometheus-cpp, takes no empty host: ":9464" would fail to bind.
    m->exposer_ = std::make_unique<prometheus::Exposer>(
        absl::StartsWith(listen, ":") ? absl::StrCat("0.0.0.0", listen) : listen);
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
  for (const auto& [name, help] : std::vector<std::pair<std::string, std::string>>{
           {"step", "The running job's last reported optimizer step"},
           {"loss", "The running job's loss per labelled token at its last reported step"},
           {"tokens_per_second", "Tokens trained per second at the last reported step"},
           {"tflops_per_gpu", "Model TFLOP/s per GPU at the last reported step"},
           {"mfu", "Model FLOPs utilization (of the GPU's datasheet peak for the job's precision)"},
           {"peak_memory_bytes", "Peak device memory of the reporting rank"},
           {"value", "Named values of the last reported step (aux_loss, grad_norm, lr, ...)"}}) {
    m->training_[name] =
        &prometheus::BuildGauge().Name("mimo_job_" + name).Help(help).Register(*m->registry_);
  }
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

void CoordinatorMetrics::SetRunningJobs(const std::vector<v1::Job>& jobs) {
  std::map<std::string,
           std::vector<std::pair<prometheus::Family<prometheus::Gauge>*, prometheus::Gauge*>>>
      shown;
  for (const v1::Job& job : jobs) {
    if (!job.has_last_metrics()) continue;
    const v1::Metrics& m = job.last_metrics();
    auto& series = shown[job.id()];
    auto set = [&](const std::string& name, double value,
                   std::map<std::string, std::string> labels) {
      prometheus::Family<prometheus::Gauge>* family = training_.at(name);
      labels["job"] = job.id();
      prometheus::Gauge& gauge = family->Add(labels);
      gauge.Set(value);
      series.emplace_back(family, &gauge);
    };
    set("step", static_cast<double>(m.step()), {});
    set("loss", m.loss(), {});
    set("tokens_per_second", m.tokens_per_second(), {});
    set("tflops_per_gpu", m.tflops_per_gpu(), {});
    set("mfu", m.mfu(), {});
    set("peak_memory_bytes", static_cast<double>(m.peak_memory_bytes()), {});
    for (const auto& [name, value] : m.values()) set("value", value, {{"name", name}});
  }
  // Series of jobs (or values) no longer shown go.
  for (const auto& [job, series] : shown_) {
    const auto now = shown.find(job);
    for (const auto& [family, gauge] : series) {
      bool kept = false;
      if (now != shown.end()) {
        for (const auto& s : now->second) kept = kept || s.second == gauge;
      }
      if (!kept) family->Remove(gauge);
    }
  }
  shown_ = std::move(shown);
}

}  // namespace mimo::coordinator
