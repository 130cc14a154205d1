// Gloo's rendezvous store over a comm::KeyValueStore, one key prefix per group.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "comm/key_value_store.h"
#include "gloo/rendezvous/store.h"

namespace mimo::comm {

// Gloo calls this while connecting a group (gloo::rendezvous::Context::connectFullMesh). Every key
// gets `prefix`, so that groups sharing one store never read each other's addresses. Gloo reads
// may read a key with get() before waiting for it, so get() waits too. Store errors are thrown as a
// StatusException (see gloo_error.h) naming the group, since Gloo's interface has no other way
// to fail; CallGloo turns them back into the Status.
class GlooStore : public gloo::rendezvous::Store {
 public:
  // `group` names the group in errors; `timeout` bounds every wait (Gloo's own is ignored).
  GlooStore(KeyValueStore& store, std::string prefix, std::string group, absl::Duration timeout);

  void set(const std::string& key, const std::vector<char>& data) override;
  std::vector<char> get(const std::string& key) override;
  void wait(const std::vector<std::string>& keys) override;
  void wait(const std::vector<std::string>& keys,
            const std::chrono::milliseconds& timeout) override;

 private:
  std::vector<std::string> WaitFor(const std::vector<std::string>& keys, absl::Duration timeout);

  KeyValueStore& store_;
  const std::string prefix_;
  const std::string group_;
  const absl::Duration timeout_;
};

}  // namespace mimo::comm
