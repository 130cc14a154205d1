// libFuzzer target: YAML or JSON text -> JobSpec -> ValidateJobSpec -> plan protos never crashes.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "absl/strings/string_view.h"
#include "coordinator/plan_proto.h"
#include "coordinator/spec_validation.h"
#include "tools/mimoctl/spec_file.h"

namespace {

// Spec files are a few KiB; longer inputs only slow the search down.
constexpr size_t kMaxInputSize = 16 * 1024;

}  // namespace

// The first byte picks the format: odd ('Y', 'y') YAML, even ('J', 'j') JSON; the rest is the
// text. Returning -1 keeps an input out of the corpus.
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0 || size > kMaxInputSize) return -1;
  const mimo::tools::SpecFormat format =
      (data[0] & 1) != 0 ? mimo::tools::SpecFormat::kYaml : mimo::tools::SpecFormat::kJson;
  const absl::string_view text(reinterpret_cast<const char*>(data) + 1, size - 1);
  absl::StatusOr<mimo::v1::JobSpec> spec = mimo::tools::ParseJobSpec(text, format);
  if (!spec.ok()) return 0;

  std::vector<mimo::coordinator::FieldViolation> violations;
  absl::StatusOr<mimo::parallel::RankPlan> plan =
      mimo::coordinator::ValidateJobSpec(*spec, &violations);
  // The contract: a plan exactly when nothing is wrong, every violation naming a field.
  if (plan.ok() != violations.empty()) std::abort();
  for (const mimo::coordinator::FieldViolation& v : violations) {
    if (v.field.empty() || v.description.empty()) std::abort();
  }
  if (plan.ok()) {
    const mimo::v1::RankPlan proto =
        mimo::coordinator::RankPlanToProto(*plan, mimo::coordinator::GroupMembers::kOmit);
    if (proto.world_size() != spec->resources().workers() ||
        proto.ranks_size() != proto.world_size()) {
      std::abort();
    }
    // What the last rank's worker is sent: its groups, each holding the rank itself.
    const int last = proto.world_size() - 1;
    const mimo::v1::RankAssignment rank = mimo::coordinator::RankToProto(*plan, last);
    for (const auto& [kind, group] : rank.groups()) {
      if (group.ranks_size() > 0 &&
          std::find(group.ranks().begin(), group.ranks().end(), last) == group.ranks().end()) {
        std::abort();
      }
    }
  }
  return 0;
}
