// The rendezvous store of one job attempt, over the coordinator's SetKey and WaitKeys.
#include "worker/coordinator_store.h"

#include <algorithm>
#include <utility>

#include "absl/time/clock.h"

namespace mimo::worker {

CoordinatorStore::CoordinatorStore(CoordinatorClient* client, std::string job_id, int attempt,
                                   CallCanceller* canceller, CoordinatorStoreOptions options)
    : client_(client),
      job_id_(std::move(job_id)),
      attempt_(attempt),
      canceller_(canceller),
      options_(options) {}

bool CoordinatorStore::PrepareRetry() {
  absl::SleepFor(options_.retry_interval);
  if (canceller_ != nullptr && canceller_->cancelled()) return false;
  std::map<std::string, std::string> mine;
  {
    absl::MutexLock lock(&mu_);
    mine = mine_;
  }
  for (const auto& [key, value] : mine) {
    if (!client_->SetKey(job_id_, attempt_, key, value, canceller_).ok()) break;
  }
  return true;
}

absl::Status CoordinatorStore::Set(absl::string_view key, absl::string_view value) {
  {
    absl::MutexLock lock(&mu_);
    mine_[std::string(key)] = std::string(value);
  }
  const absl::Time give_up = absl::Now() + options_.set_retry_timeout;
  while (true) {
    absl::Status status =
        client_->SetKey(job_id_, attempt_, std::string(key), std::string(value), canceller_);
    if (!absl::IsUnavailable(status) || absl::Now() > give_up || !PrepareRetry()) return status;
  }
}

absl::StatusOr<std::vector<std::string>> CoordinatorStore::Wait(
    const std::vector<std::string>& keys, absl::Duration timeout) {
  if (keys.empty()) return std::vector<std::string>();
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    const absl::Duration left = std::max(deadline - absl::Now(), absl::ZeroDuration());
    absl::StatusOr<std::vector<std::string>> values =
        client_->WaitKeys(job_id_, attempt_, keys, left, canceller_);
    if (!absl::IsUnavailable(values.status()) || absl::Now() >= deadline || !PrepareRetry()) {
      return values;
    }
  }
}

}  // namespace mimo::worker
