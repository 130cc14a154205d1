// A named factorization of a contiguous rank range, enumerated like Megatron-Core's HyperCommGrid.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace mimo::parallel {

// A view lays the ranks [rank_offset, rank_offset + prod(shape)) out as an N-d grid. The FIRST
// dim varies fastest over consecutive ranks. For a set of dims (a bit mask over the view's dims)
// the ranks split into groups: a group holds all ranks that agree on every other dim, listed with
// the earlier-named dims varying fastest, and groups are numbered in ascending order of their
// lowest rank. This is HyperCommGrid's create_pg/get_rank_enum order.
class GridView {
 public:
  // Bit i set = dim i of the view belongs to the group.
  using DimMask = uint32_t;

  // Fails unless shape and dim_names have equal, non-zero length (at most 16), every size is
  // positive, names are unique and non-empty, and the ranks fit in 31 bits.
  static absl::StatusOr<GridView> Create(std::vector<int> shape, std::vector<std::string> dim_names,
                                         int rank_offset);

  int ndims() const { return static_cast<int>(shape_.size()); }
  int size() const { return size_; }
  int rank_offset() const { return rank_offset_; }
  const std::vector<int>& shape() const { return shape_; }
  const std::vector<std::string>& dim_names() const { return dim_names_; }
  bool Contains(int rank) const { return rank >= rank_offset_ && rank < rank_offset_ + size_; }

  // Index of the named dim, or -1.
  int DimIndex(absl::string_view name) const;
  // The mask of the named dims; fails on an unknown or repeated name.
  absl::StatusOr<DimMask> Mask(absl::Span<const absl::string_view> names) const;

  // Coordinate of `rank` along dim `dim`. Requires Contains(rank).
  int Coordinate(int rank, int dim) const {
    return (rank - rank_offset_) / strides_[dim] % shape_[dim];
  }
  // The global rank at `coords`; requires coords.size() == ndims().
  int RankAt(absl::Span<const int> coords) const;

  // Ranks per group of `mask`, and the number of such groups.
  int GroupSize(DimMask mask) const;
  int NumGroups(DimMask mask) const { return size_ / GroupSize(mask); }
  // Position of `rank`'s group in the listing of `mask`'s groups. Requires Contains(rank).
  int GroupIndex(int rank, DimMask mask) const;
  // Appends the members of group `group` of `mask`, in enumeration order.
  void AppendGroupMembers(int group, DimMask mask, std::vector<int>* out) const;
  // All groups of `mask`, in order: HyperCommGrid.get_rank_enum.
  std::vector<std::vector<int>> RankEnum(DimMask mask) const;

 private:
  GridView() = default;

  std::vector<int> shape_;
  std::vector<std::string> dim_names_;
  std::vector<int> strides_;  // strides_[0] = 1; strides_[i] = prod(shape_[0..i)).
  int rank_offset_ = 0;
  int size_ = 0;
};

}  // namespace mimo::parallel
