// Naming of the rendezvous keys in a KeyValueStore.
#include "comm/key_value_store.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace mimo::comm {

std::string GroupStorePrefix(absl::string_view kind, const std::vector<int>& members) {
  return absl::StrCat("comm/", kind, "/", absl::StrJoin(members, ","), "/");
}

}  // namespace mimo::comm
