// MetricsSender: Post never waits for a send, the newest report replaces one not sent yet,
// failures reach on_error, and the destructor sends what is pending.
#include "worker/metrics_sender.h"

#include <gtest/gtest.h>

#include <vector>

#include "absl/synchronization/notification.h"

namespace mimo::worker {
namespace {

v1::ReportMetricsRequest AtStep(int64_t step) {
  v1::ReportMetricsRequest r;
  r.mutable_metrics()->set_step(step);
  return r;
}

TEST(MetricsSenderTest, PostNeverWaitsAndTheNewestReplacesOnesNotSent) {
  absl::Notification release;
  absl::Mutex mu;
  std::vector<int64_t> sent;
  std::vector<std::string> errors;
  {
    MetricsSender sender(
        [&](const v1::ReportMetricsRequest& r) {
          release.WaitForNotification();  // A coordinator that does not answer yet.
          absl::MutexLock lock(&mu);
          sent.push_back(r.metrics().step());
          return r.metrics().step() == 3 ? absl::UnavailableError("down") : absl::OkStatus();
        },
        [&](const absl::Status& s) {
          absl::MutexLock lock(&mu);
          errors.push_back(std::string(s.message()));
        });
    const absl::Time start = absl::Now();
    sender.Post(AtStep(1));
    absl::SleepFor(absl::Milliseconds(50));  // Step 1 in flight.
    sender.Post(AtStep(2));
    sender.Post(AtStep(3));  // Replaces 2.
    EXPECT_LT(absl::Now() - start, absl::Seconds(1));
    EXPECT_FALSE(sender.Flush(absl::Milliseconds(50)));  // Still in flight.
    release.Notify();
    EXPECT_TRUE(sender.Flush(absl::Seconds(5)));
    sender.Post(AtStep(4));  // Sent by the destructor at the latest.
  }
  EXPECT_EQ(sent, (std::vector<int64_t>{1, 3, 4}));
  EXPECT_EQ(errors, (std::vector<std::string>{"down"}));
}

}  // namespace
}  // namespace mimo::worker
