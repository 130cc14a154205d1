// The rendezvous store communicators bootstrap from: set, get, and wait for keys.
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace mimo::comm {

// A key-value store shared by every rank of one job attempt (in production the coordinator's
// WorkerService store; in tests an in-memory one). Keys are set once; values are bytes.
// Implementations are thread-safe.
class KeyValueStore {
 public:
  virtual ~KeyValueStore() = default;

  // Stores `value` under `key`, replacing an earlier value.
  virtual absl::Status Set(absl::string_view key, absl::string_view value) = 0;
  // Waits up to `timeout` until every key is set and returns their values in the order asked.
  // DeadlineExceeded names the keys still missing; Unavailable when the store went away.
  virtual absl::StatusOr<std::vector<std::string>> Wait(const std::vector<std::string>& keys,
                                                        absl::Duration timeout) = 0;
};

// The prefix of every key a process group's communicators rendezvous under:
// "comm/<kind>/<members joined by ','>/", so that groups sharing a store never collide.
std::string GroupStorePrefix(absl::string_view kind, const std::vector<int>& members);

}  // namespace mimo::comm
