// The fused QKV rows between mimo's order and Megatron-Core's.
#include "tools/convert/qkv_layout.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace mimo::tools {

bool IsFusedQkv(absl::string_view name) {
  return absl::EndsWith(name, ".self_attention.linear_qkv.weight") ||
         absl::EndsWith(name, ".self_attention.linear_qkv.bias");
}

absl::StatusOr<QkvShape> QkvShapeOf(const v1::Module& module) {
  const v1::Transformer* t = module.has_language() ? &module.language().transformer()
                             : module.has_vision() ? &module.vision().transformer()
                             : module.has_audio()  ? &module.audio().transformer()
                                                   : nullptr;
  if (t == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("module \"", module.name(), "\" has no model"));
  }
  const int64_t heads = t->num_attention_heads();
  const int64_t groups = t->num_query_groups() > 0 ? t->num_query_groups() : heads;
  if (heads < 1 || groups < 1 || heads % groups != 0 || t->hidden_size() % heads != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("module \"", module.name(), "\": ", heads, " heads in ", groups,
                     " query groups of width ", t->hidden_size(), " / ", heads, " do not split"));
  }
  return QkvShape{.heads = heads, .groups = groups, .head_dim = t->hidden_size() / heads};
}

int64_t MegatronRow(const QkvShape& s, int64_t row) {
  const int64_t per_group = s.heads / s.groups;  // Query heads of a group.
  const int64_t block = row / s.head_dim, within = row % s.head_dim;
  int64_t group, slot;  // Slot in the group: its query heads, then key, then value.
  if (block < s.heads) {
    group = block / per_group;
    slot = block % per_group;
  } else if (block < s.heads + s.groups) {
    group = block - s.heads;
    slot = per_group;
  } else {
    group = block - s.heads - s.groups;
    slot = per_group + 1;
  }
  return (group * (per_group + 2) + slot) * s.head_dim + within;
}

std::vector<std::pair<int64_t, int64_t>> MegatronRuns(const QkvShape& s, int64_t first,
                                                      int64_t count) {
  std::vector<std::pair<int64_t, int64_t>> runs;
  for (int64_t row = first; row < first + count;) {
    // To the end of this head's rows (consecutive in both orders) or of the range.
    const int64_t n = std::min(first + count, (row / s.head_dim + 1) * s.head_dim) - row;
    const int64_t to = MegatronRow(s, row);
    if (!runs.empty() && runs.back().first + runs.back().second == to) {
      runs.back().second += n;
    } else {
      runs.push_back({to, n});
    }
    row += n;
  }
  return runs;
}

void ToMegatronOrder(const QkvShape& s, size_t row_bytes, const char* in, char* out) {
  for (int64_t row = 0; row < s.rows(); ++row) {
    std::memcpy(out + MegatronRow(s, row) * row_bytes, in + row * row_bytes, row_bytes);
  }
}

}  // namespace mimo::tools
