// Gloo's rendezvous store over a comm::KeyValueStore, one key prefix per group.
#include "comm/gloo_store.h"

#include "absl/strings/str_cat.h"
#include "comm/gloo_error.h"

namespace mimo::comm {

GlooStore::GlooStore(KeyValueStore& store, std::string prefix, std::string group,
                     absl::Duration timeout)
    : store_(store), prefix_(std::move(prefix)), group_(std::move(group)), timeout_(timeout) {}

void GlooStore::set(const std::string& key, const std::vector<char>& data) {
  const absl::Status status =
      store_.Set(prefix_ + key, absl::string_view(data.data(), data.size()));
  if (!status.ok()) {
    throw StatusException(
        absl::Status(status.code(), absl::StrCat("rendezvous of group ", group_, ": setting key ",
                                                 prefix_, key, ": ", status.message())));
  }
}

std::vector<char> GlooStore::get(const std::string& key) {
  std::vector<std::string> values = WaitFor({key}, timeout_);
  return std::vector<char>(values[0].begin(), values[0].end());
}

void GlooStore::wait(const std::vector<std::string>& keys) { WaitFor(keys, timeout_); }

void GlooStore::wait(const std::vector<std::string>& keys, const std::chrono::milliseconds&) {
  // Gloo passes its context's timeout, which GlooCommunicator::Connect shortens while the pairs
  // are made: the group's whole timeout is for peers to show up.
  WaitFor(keys, timeout_);
}

std::vector<std::string> GlooStore::WaitFor(const std::vector<std::string>& keys,
                                            absl::Duration timeout) {
  std::vector<std::string> full_keys;
  full_keys.reserve(keys.size());
  for (const std::string& key : keys) full_keys.push_back(prefix_ + key);
  absl::StatusOr<std::vector<std::string>> values = store_.Wait(full_keys, timeout);
  if (!values.ok()) {
    // A missing key means a member of the group never reached it.
    throw StatusException(
        absl::Status(values.status().code(),
                     absl::StrCat("rendezvous of group ", group_,
                                  " (a member did not show up?): ", values.status().message())));
  }
  return *std::move(values);
}

}  // namespace mimo::comm
