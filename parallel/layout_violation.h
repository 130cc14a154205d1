// One problem found in a layout, and the Status that carries a list of them.
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"

namespace mimo::parallel {

// `module` indexes LayoutSpec::modules (-1: the layout as a whole). `field` names the offending
// field ("tp", "dp", "rank_offset", "world_size", "language", ...; empty when no single field
// is at fault), so that an API can point at e.g. modules[1].parallelism.ep.
struct LayoutViolation {
  int module = -1;
  std::string field;
  std::string message;  // A complete sentence naming the modules, ranks and numbers involved.
};

// InvalidArgument with one violation per line; OK when the list is empty.
absl::Status ViolationsToStatus(const std::vector<LayoutViolation>& violations);

}  // namespace mimo::parallel
