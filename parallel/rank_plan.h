// The whole world's plan: every rank's module, coordinates, groups and seeds.
#pragma once

#include <array>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "parallel/grid_view.h"
#include "parallel/layout.h"
#include "parallel/rng_seeds.h"

namespace mimo::parallel {

// The process groups a rank belongs to. Dense groups come from the dense view (tp, cp, dp, pp);
// embedding groups from the rank's pp group; expert groups from the language module's expert view
// (expt_tp, ep, expt_dp, pp).
enum class GroupKind {
  kTp,         // [tp]
  kCp,         // [cp]
  kDp,         // [dp]
  kPp,         // [pp]
  kDpCp,       // [cp, dp]: gradient reduction with context parallelism
  kTpCp,       // [tp, cp]
  kTpPp,       // [tp, pp]: the model-parallel group
  kTpDpCp,     // [tp, cp, dp]
  kTpCpDpPp,   // [tp, cp, dp, pp]: the whole module
  kEmbd,       // the first and last ranks of the pp group (tied embeddings)
  kPosEmbd,    // the first rank of the pp group (position embeddings)
  kEp,         // expert view [ep]
  kExptTp,     // expert view [expt_tp]
  kExptDp,     // expert view [expt_dp]
  kExptTpEp,   // expert view [expt_tp, ep]
  kExptTpEpPp  // expert view [expt_tp, ep, pp]
};
inline constexpr int kNumGroupKinds = 16;

// The JSON key of a kind: "tp", "dp_cp", "expt_tp_ep_pp", ...
absl::string_view GroupKindName(GroupKind kind);
// True for the kinds that only the language module has.
inline bool IsExpertGroup(GroupKind kind) { return kind >= GroupKind::kEp; }

class RankPlan;
// Validates `spec` (see ResolveLayout) and plans every rank in O(world) time and memory. Also
// checks that the expert view's pp groups equal the dense view's.
absl::StatusOr<RankPlan> BuildRankPlan(const LayoutSpec& spec,
                                       std::vector<LayoutViolation>* violations = nullptr);

// One module's views and all its groups, each kind stored once as consecutive equal-size groups.
class ModulePlan {
 public:
  const ResolvedModule& config() const { return config_; }
  const GridView& dense_view() const { return dense_; }
  // Null for encoders.
  const GridView* expert_view() const { return expert_ ? &*expert_ : nullptr; }

  // Members of `rank`'s group of `kind`, as global ranks in enumeration order. Empty when the
  // module has no such group (expert kinds on an encoder) or the rank is not a member (embd on a
  // middle pipeline stage, pos_embd on any but the first). Requires a rank of this module.
  absl::Span<const int> Group(int rank, GroupKind kind) const;
  // All groups of `kind`, in enumeration order.
  std::vector<absl::Span<const int>> Groups(GroupKind kind) const;

 private:
  friend absl::StatusOr<RankPlan> BuildRankPlan(const LayoutSpec&, std::vector<LayoutViolation>*);
  ModulePlan(ResolvedModule config, GridView dense) : config_(std::move(config)), dense_(dense) {}

  static constexpr int kPpDim = 3;  // pp is the last dim of both views.

  ResolvedModule config_;
  GridView dense_;
  std::optional<GridView> expert_;
  std::array<std::vector<int>, kNumGroupKinds> members_;  // Flattened groups of each kind.
  std::array<int, kNumGroupKinds> group_size_{};          // 0: the kind does not apply.
  std::array<GridView::DimMask, kNumGroupKinds> mask_{};  // Dims that index the kind's groups.
};

// What one rank does.
struct RankAssignment {
  int module = 0;  // Index into RankPlan::modules().
  DenseCoords dense;
  std::optional<ExpertCoords> expert;  // Language ranks only.
  RankSeeds seeds;
};

class RankPlan {
 public:
  int world_size() const { return static_cast<int>(ranks_.size()); }
  int64_t seed() const { return seed_; }
  const std::vector<ModulePlan>& modules() const { return modules_; }
  const ModulePlan& language() const { return modules_[language_]; }
  const RankAssignment& rank(int r) const { return ranks_[r]; }
  const ModulePlan& module_of(int r) const { return modules_[ranks_[r].module]; }
  absl::Span<const int> Group(int r, GroupKind kind) const { return module_of(r).Group(r, kind); }

 private:
  friend absl::StatusOr<RankPlan> BuildRankPlan(const LayoutSpec&, std::vector<LayoutViolation>*);
  RankPlan() = default;

  int64_t seed_ = 0;
  int language_ = 0;
  std::vector<ModulePlan> modules_;
  std::vector<RankAssignment> ranks_;
};

}  // namespace mimo::parallel
