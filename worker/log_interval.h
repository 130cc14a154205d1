// The steps between two reports of a training run, summed into what Megatron-LM's iteration line
// reports for them.
#pragma once

#include <cstdint>
#include <map>
#include <vector>

#include "worker/trainer.h"

namespace mimo::worker {

// A report over the steps since the previous one (Megatron-LM's training_log with
// --log-interval): `mean` holds the last step's step, lr, grad_norm, peak memory and the expert
// loads summed over the steps (their shares are the interval's); its loss and aux_loss are the
// means over the steps that were not skipped (over all of them when every one was), and its
// seconds, tokens, labelled, model_flops, data and batch seconds, overlapped buckets and load
// imbalances are means per step, so rates computed from it are the interval's.
struct IntervalMetrics {
  StepMetrics mean;
  int64_t steps = 0;    // Steps in the interval, >= 1.
  int64_t skipped = 0;  // Of which skipped (no update).
  int64_t nan = 0;      // Of which with a loss that is not finite.
};

class LogInterval {
 public:
  void Add(const StepMetrics& m);
  // Steps added since the last Take.
  int64_t steps() const { return static_cast<int64_t>(steps_.size()); }
  // The report of the steps added since the last Take (at least one must have been), which
  // starts the next interval.
  IntervalMetrics Take();

 private:
  std::vector<StepMetrics> steps_;
};

}  // namespace mimo::worker
