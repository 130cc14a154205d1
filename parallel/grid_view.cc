// A named factorization of a contiguous rank range, enumerated like Megatron-Core's HyperCommGrid.
#include "parallel/grid_view.h"

#include <limits>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"

namespace mimo::parallel {

absl::StatusOr<GridView> GridView::Create(std::vector<int> shape,
                                          std::vector<std::string> dim_names, int rank_offset) {
  if (shape.size() != dim_names.size()) {
    return absl::InvalidArgumentError(absl::StrCat("grid view has ", shape.size(), " sizes but ",
                                                   dim_names.size(), " dim names"));
  }
  if (shape.empty() || shape.size() > 16) {
    return absl::InvalidArgumentError(
        absl::StrCat("grid view needs 1 to 16 dims, got ", shape.size()));
  }
  if (rank_offset < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("grid view rank_offset must be non-negative, got ", rank_offset));
  }
  absl::flat_hash_set<std::string> seen;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (dim_names[i].empty() || !seen.insert(dim_names[i]).second) {
      return absl::InvalidArgumentError(absl::StrCat("grid view dim names must be non-empty and ",
                                                     "unique: [", absl::StrJoin(dim_names, ", "),
                                                     "]"));
    }
    if (shape[i] <= 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "grid view dim '", dim_names[i], "' must have a positive size, got ", shape[i]));
    }
  }
  int64_t size = 1;
  for (int s : shape) {
    size *= s;
    if (size + rank_offset > std::numeric_limits<int>::max()) {
      return absl::InvalidArgumentError("grid view ranks do not fit in 31 bits");
    }
  }
  GridView view;
  view.shape_ = std::move(shape);
  view.dim_names_ = std::move(dim_names);
  view.rank_offset_ = rank_offset;
  view.size_ = static_cast<int>(size);
  view.strides_.resize(view.shape_.size());
  int stride = 1;
  for (size_t i = 0; i < view.shape_.size(); ++i) {
    view.strides_[i] = stride;
    stride *= view.shape_[i];
  }
  return view;
}

int GridView::DimIndex(absl::string_view name) const {
  for (int i = 0; i < ndims(); ++i) {
    if (dim_names_[i] == name) return i;
  }
  return -1;
}

absl::StatusOr<GridView::DimMask> GridView::Mask(absl::Span<const absl::string_view> names) const {
  DimMask mask = 0;
  for (absl::string_view name : names) {
    const int dim = DimIndex(name);
    if (dim < 0) {
      return absl::InvalidArgumentError(absl::StrCat("'", name, "' is not a dim of the view [",
                                                     absl::StrJoin(dim_names_, ", "), "]"));
    }
    if (mask & (DimMask{1} << dim)) {
      return absl::InvalidArgumentError(absl::StrCat("dim '", name, "' is named twice"));
    }
    mask |= DimMask{1} << dim;
  }
  return mask;
}

int GridView::RankAt(absl::Span<const int> coords) const {
  int rank = rank_offset_;
  for (int i = 0; i < ndims(); ++i) rank += coords[i] * strides_[i];
  return rank;
}

int GridView::GroupSize(DimMask mask) const {
  int n = 1;
  for (int i = 0; i < ndims(); ++i) {
    if (mask & (DimMask{1} << i)) n *= shape_[i];
  }
  return n;
}

int GridView::GroupIndex(int rank, DimMask mask) const {
  // The dims outside the mask, earliest fastest, number the groups.
  int index = 0, radix = 1;
  for (int i = 0; i < ndims(); ++i) {
    if (mask & (DimMask{1} << i)) continue;
    index += Coordinate(rank, i) * radix;
    radix *= shape_[i];
  }
  return index;
}

void GridView::AppendGroupMembers(int group, DimMask mask, std::vector<int>* out) const {
  // Lowest rank of the group: decode `group` over the dims outside the mask, earliest fastest.
  int base = rank_offset_;
  int rest = group;
  for (int i = 0; i < ndims(); ++i) {
    if (mask & (DimMask{1} << i)) continue;
    base += rest % shape_[i] * strides_[i];
    rest /= shape_[i];
  }
  // Walk the masked dims as a mixed-radix counter, earliest dim fastest.
  int in_group_dims[16];
  int n = 0;
  for (int i = 0; i < ndims(); ++i) {
    if (mask & (DimMask{1} << i)) in_group_dims[n++] = i;
  }
  int counter[16] = {};
  const int group_size = GroupSize(mask);
  int rank = base;
  for (int k = 0; k < group_size; ++k) {
    out->push_back(rank);
    for (int d = 0; d < n; ++d) {
      const int dim = in_group_dims[d];
      if (++counter[d] < shape_[dim]) {
        rank += strides_[dim];
        break;
      }
      counter[d] = 0;
      rank -= (shape_[dim] - 1) * strides_[dim];
    }
  }
}

std::vector<std::vector<int>> GridView::RankEnum(DimMask mask) const {
  std::vector<std::vector<int>> groups(NumGroups(mask));
  for (int g = 0; g < static_cast<int>(groups.size()); ++g) {
    groups[g].reserve(GroupSize(mask));
    AppendGroupMembers(g, mask, &groups[g]);
  }
  return groups;
}

}  // namespace mimo::parallel
