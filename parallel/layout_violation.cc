// One problem found in a layout, and the Status that carries a list of them.
#include "parallel/layout_violation.h"

#include "absl/strings/str_join.h"

namespace mimo::parallel {

absl::Status ViolationsToStatus(const std::vector<LayoutViolation>& violations) {
  if (violations.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrJoin(violations, "\n",
                    [](std::string* out, const LayoutViolation& v) { out->append(v.message); }));
}

}  // namespace mimo::parallel
