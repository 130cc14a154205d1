// A KeyValueStore in process memory, for tests and single-process jobs.
#include "comm/in_memory_store.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"

namespace mimo::comm {

absl::Status InMemoryStore::Set(absl::string_view key, absl::string_view value) {
  absl::MutexLock lock(&mu_);
  if (shut_down_) return absl::UnavailableError("in-memory store was shut down");
  values_[key] = std::string(value);
  changed_.SignalAll();
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> InMemoryStore::Wait(const std::vector<std::string>& keys,
                                                             absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  absl::MutexLock lock(&mu_);
  std::vector<std::string> missing;
  // One more look after the deadline passes, so that a Set landing right at it still counts.
  bool timed_out = false;
  for (;;) {
    if (shut_down_) return absl::UnavailableError("in-memory store was shut down");
    missing.clear();
    for (const std::string& key : keys) {
      if (!values_.contains(key)) missing.push_back(key);
    }
    if (missing.empty()) break;
    if (timed_out) {
      return absl::DeadlineExceededError(
          absl::StrCat("timed out after ", absl::FormatDuration(timeout), " waiting for keys ",
                       absl::StrJoin(missing, ", ")));
    }
    timed_out = changed_.WaitWithDeadline(&mu_, deadline);
  }
  std::vector<std::string> values;
  values.reserve(keys.size());
  for (const std::string& key : keys) values.push_back(values_.at(key));
  return values;
}

void InMemoryStore::Shutdown() {
  absl::MutexLock lock(&mu_);
  shut_down_ = true;
  changed_.SignalAll();
}

}  // namespace mimo::comm
