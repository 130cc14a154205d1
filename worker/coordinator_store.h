// The rendezvous store of one job attempt, over the coordinator's SetKey and WaitKeys.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "comm/key_value_store.h"
#include "worker/call_canceller.h"
#include "worker/coordinator_client.h"

namespace mimo::worker {

struct CoordinatorStoreOptions {
  // How long Set keeps retrying while the coordinator is unavailable (Wait retries until its own
  // timeout).
  absl::Duration set_retry_timeout = absl::Seconds(30);
  // Pause between retries.
  absl::Duration retry_interval = absl::Milliseconds(200);
};

// Keys live in the coordinator, scoped to (job_id, attempt): a restarted attempt never sees the
// keys of the one before, and the coordinator forgets them when the attempt ends.
//
// A coordinator restart loses every key (they live in its memory) while the job's ranks may be
// waiting in rendezvous, to be re-attached by the new coordinator. So calls that find the
// coordinator unavailable are retried, and before a retry the store sets again every key it set
// itself, so that peers waiting for them find them in the new coordinator.
//
// Calls made under `canceller` end as soon as it is cancelled (the job was stopped, or the
// coordinator is lost for good), so that a rank waiting for a peer that will never come does
// not wait out the rendezvous timeout. Thread-safe.
class CoordinatorStore : public comm::KeyValueStore {
 public:
  // `client` and `canceller` (may be null) must outlive the store.
  CoordinatorStore(CoordinatorClient* client, std::string job_id, int attempt,
                   CallCanceller* canceller = nullptr, CoordinatorStoreOptions options = {});

  absl::Status Set(absl::string_view key, absl::string_view value) override;
  // Cancelled once the canceller was cancelled, DeadlineExceeded naming the missing keys after
  // `timeout`, Unavailable when the coordinator could not be reached until then.
  absl::StatusOr<std::vector<std::string>> Wait(const std::vector<std::string>& keys,
                                                absl::Duration timeout) override;

 private:
  // After an Unavailable: waits retry_interval (false when cancelled meanwhile) and sets this
  // store's keys again.
  bool PrepareRetry();

  CoordinatorClient* const client_;
  const std::string job_id_;
  const int attempt_;
  CallCanceller* const canceller_;
  const CoordinatorStoreOptions options_;
  absl::Mutex mu_;
  std::map<std::string, std::string> mine_ ABSL_GUARDED_BY(mu_);
};

}  // namespace mimo::worker
