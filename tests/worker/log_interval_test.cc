// LogInterval: a report averages the interval's losses over its steps not skipped, its times and
// throughput per step, sums its expert loads and counts its skipped and NaN steps.
#include "worker/log_interval.h"

#include <cmath>
#include <limits>

#include "gtest/gtest.h"

namespace mimo::worker {
namespace {

StepMetrics Step(int64_t step, double loss, double seconds, bool skipped = false) {
  StepMetrics m;
  m.step = step;
  m.loss = loss;
  m.aux_loss = loss / 100;
  m.grad_norm = step * 0.5;
  m.lr = step * 1e-4;
  m.skipped = skipped;
  m.seconds = seconds;
  m.tokens = 1000 * step;
  m.model_flops = 1e12 * step;
  m.expert_load = {step, 2 * step};
  m.expert_load_imbalance = {{1, 1.0 + step}};
  m.peak_memory_bytes = 100 * step;
  return m;
}

TEST(LogIntervalTest, OneStepIsItself) {
  LogInterval interval;
  interval.Add(Step(7, 2.5, 0.25));
  const IntervalMetrics r = interval.Take();
  EXPECT_EQ(r.steps, 1);
  EXPECT_EQ(r.skipped, 0);
  EXPECT_EQ(r.nan, 0);
  EXPECT_EQ(r.mean.step, 7);
  EXPECT_DOUBLE_EQ(r.mean.loss, 2.5);
  EXPECT_DOUBLE_EQ(r.mean.seconds, 0.25);
  EXPECT_EQ(r.mean.tokens, 7000);
  EXPECT_EQ(r.mean.expert_load, (std::vector<int64_t>{7, 14}));
}

TEST(LogIntervalTest, AveragesLikeMegatronsIterationLine) {
  LogInterval interval;
  interval.Add(Step(1, 4.0, 0.1));
  interval.Add(Step(2, 100.0, 0.2, /*skipped=*/true));  // Left out of the loss, not the time.
  interval.Add(Step(3, 2.0, 0.6));
  EXPECT_EQ(interval.steps(), 3);
  const IntervalMetrics r = interval.Take();
  EXPECT_EQ(r.steps, 3);
  EXPECT_EQ(r.skipped, 1);
  EXPECT_EQ(r.nan, 0);
  EXPECT_DOUBLE_EQ(r.mean.loss, 3.0);
  EXPECT_DOUBLE_EQ(r.mean.aux_loss, 0.03);
  EXPECT_DOUBLE_EQ(r.mean.seconds, 0.3);
  EXPECT_DOUBLE_EQ(r.mean.model_flops, 2e12);
  EXPECT_EQ(r.mean.tokens, 2000);
  // The last step's values.
  EXPECT_EQ(r.mean.step, 3);
  EXPECT_DOUBLE_EQ(r.mean.grad_norm, 1.5);
  EXPECT_DOUBLE_EQ(r.mean.lr, 3e-4);
  EXPECT_EQ(r.mean.peak_memory_bytes, 300);
  EXPECT_EQ(r.mean.expert_load, (std::vector<int64_t>{6, 12}));
  EXPECT_DOUBLE_EQ(r.mean.expert_load_imbalance.at(1), 3.0);
  // The next interval starts empty.
  EXPECT_EQ(interval.steps(), 0);
  interval.Add(Step(4, 1.0, 0.5));
  EXPECT_DOUBLE_EQ(interval.Take().mean.loss, 1.0);
}

TEST(LogIntervalTest, CountsNanStepsAndShowsTheLossWhenEveryStepWasSkipped) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  LogInterval interval;
  interval.Add(Step(1, nan, 0.1, /*skipped=*/true));
  interval.Add(Step(2, 3.0, 0.1, /*skipped=*/true));
  const IntervalMetrics r = interval.Take();
  EXPECT_EQ(r.skipped, 2);
  EXPECT_EQ(r.nan, 1);
  EXPECT_TRUE(std::isnan(r.mean.loss));
}

}  // namespace
}  // namespace mimo::worker
