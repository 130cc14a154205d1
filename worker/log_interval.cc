// LogInterval: the interval's sums and means.
#include "worker/log_interval.h"

#include <cmath>
#include <utility>

namespace mimo::worker {

void LogInterval::Add(const StepMetrics& m) { steps_.push_back(m); }

IntervalMetrics LogInterval::Take() {
  IntervalMetrics out;
  out.steps = static_cast<int64_t>(steps_.size());
  if (steps_.empty()) return out;
  StepMetrics& mean = out.mean;
  mean = steps_.back();
  double loss = 0, aux = 0, seconds = 0, flops = 0, data = 0, batch = 0;
  int64_t tokens = 0, labelled = 0, buckets = 0, advanced = 0;
  double all_loss = 0, all_aux = 0;
  std::vector<int64_t> load(mean.expert_load.size(), 0);
  std::map<int, double> imbalance;
  for (const StepMetrics& m : steps_) {
    if (m.skipped) ++out.skipped;
    if (!std::isfinite(m.loss)) ++out.nan;
    if (!m.skipped) {
      ++advanced;
      loss += m.loss;
      aux += m.aux_loss;
    }
    all_loss += m.loss;
    all_aux += m.aux_loss;
    seconds += m.seconds;
    flops += m.model_flops;
    data += m.data_wait_seconds;
    batch += m.batch_seconds;
    tokens += m.tokens;
    labelled += m.labelled;
    buckets += m.overlapped_buckets;
    for (size_t e = 0; e < load.size() && e < m.expert_load.size(); ++e)
      load[e] += m.expert_load[e];
    for (const auto& [layer, value] : m.expert_load_imbalance) imbalance[layer] += value;
  }
  const double n = static_cast<double>(out.steps);
  mean.loss = advanced > 0 ? loss / advanced : all_loss / n;
  mean.aux_loss = advanced > 0 ? aux / advanced : all_aux / n;
  mean.seconds = seconds / n;
  mean.model_flops = flops / n;
  mean.data_wait_seconds = data / n;
  mean.batch_seconds = batch / n;
  mean.tokens = static_cast<int64_t>(std::llround(static_cast<double>(tokens) / n));
  mean.labelled = static_cast<int64_t>(std::llround(static_cast<double>(labelled) / n));
  mean.overlapped_buckets = static_cast<int64_t>(std::llround(static_cast<double>(buckets) / n));
  mean.expert_load = std::move(load);
  for (auto& [layer, value] : imbalance) value /= n;
  mean.expert_load_imbalance = std::move(imbalance);
  steps_.clear();
  return out;
}

}  // namespace mimo::worker
