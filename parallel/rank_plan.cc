// The whole world's plan: every rank's module, coordinates, groups and seeds.
#include "parallel/rank_plan.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/status_macros.h"

namespace mimo::parallel {
namespace {

struct KindDims {
  GroupKind kind;
  std::vector<absl::string_view> dims;
};

const std::vector<KindDims>& DenseKinds() {
  static const auto* kinds = new std::vector<KindDims>{
      {GroupKind::kTp, {"tp"}},
      {GroupKind::kCp, {"cp"}},
      {GroupKind::kDp, {"dp"}},
      {GroupKind::kPp, {"pp"}},
      {GroupKind::kDpCp, {"cp", "dp"}},
      {GroupKind::kTpCp, {"tp", "cp"}},
      {GroupKind::kTpPp, {"tp", "pp"}},
      {GroupKind::kTpDpCp, {"tp", "cp", "dp"}},
      {GroupKind::kTpCpDpPp, {"tp", "cp", "dp", "pp"}},
  };
  return *kinds;
}

const std::vector<KindDims>& ExpertKinds() {
  static const auto* kinds = new std::vector<KindDims>{
      {GroupKind::kEp, {"ep"}},
      {GroupKind::kExptTp, {"expt_tp"}},
      {GroupKind::kExptDp, {"expt_dp"}},
      {GroupKind::kExptTpEp, {"expt_tp", "ep"}},
      {GroupKind::kExptTpEpPp, {"expt_tp", "ep", "pp"}},
  };
  return *kinds;
}

// Appends every group of `dims` in `view` to `members`; returns the dims' mask.
absl::StatusOr<GridView::DimMask> FillGroups(const GridView& view,
                                             const std::vector<absl::string_view>& dims,
                                             std::vector<int>* members) {
  MIMO_ASSIGN_OR_RETURN(const GridView::DimMask mask, view.Mask(dims));
  members->reserve(view.size());
  for (int g = 0; g < view.NumGroups(mask); ++g) view.AppendGroupMembers(g, mask, members);
  return mask;
}

}  // namespace

absl::string_view GroupKindName(GroupKind kind) {
  static constexpr absl::string_view kNames[kNumGroupKinds] = {
      "tp",          "cp",   "dp",       "pp", "dp_cp",   "tp_cp",   "tp_pp",      "tp_dp_cp",
      "tp_cp_dp_pp", "embd", "pos_embd", "ep", "expt_tp", "expt_dp", "expt_tp_ep", "expt_tp_ep_pp"};
  return kNames[static_cast<int>(kind)];
}

absl::Span<const int> ModulePlan::Group(int rank, GroupKind kind) const {
  const int k = static_cast<int>(kind);
  const int size = group_size_[k];
  if (size == 0) return {};
  if (kind == GroupKind::kEmbd || kind == GroupKind::kPosEmbd) {
    const int pp_rank = dense_.Coordinate(rank, kPpDim);
    if (pp_rank != 0 && (kind == GroupKind::kPosEmbd || pp_rank != config_.pp - 1)) return {};
  }
  const GridView& view = IsExpertGroup(kind) ? *expert_ : dense_;
  const size_t index = view.GroupIndex(rank, mask_[k]);
  return absl::Span<const int>(members_[k]).subspan(index * size, size);
}

std::vector<absl::Span<const int>> ModulePlan::Groups(GroupKind kind) const {
  const int k = static_cast<int>(kind);
  std::vector<absl::Span<const int>> groups;
  if (group_size_[k] == 0) return groups;
  for (size_t at = 0; at < members_[k].size(); at += group_size_[k]) {
    groups.push_back(absl::Span<const int>(members_[k]).subspan(at, group_size_[k]));
  }
  return groups;
}

absl::StatusOr<RankPlan> BuildRankPlan(const LayoutSpec& spec,
                                       std::vector<LayoutViolation>* violations) {
  MIMO_ASSIGN_OR_RETURN(ResolvedLayout layout, ResolveLayout(spec, violations));
  RankPlan plan;
  plan.seed_ = spec.seed;
  plan.language_ = layout.language_index;
  plan.ranks_.resize(layout.world_size);
  plan.modules_.reserve(layout.modules.size());
  for (ResolvedModule& m : layout.modules) {
    MIMO_ASSIGN_OR_RETURN(
        GridView dense,
        GridView::Create({m.tp, m.cp, m.dp, m.pp}, {"tp", "cp", "dp", "pp"}, m.rank_offset));
    ModulePlan mp(m, std::move(dense));
    for (const KindDims& kd : DenseKinds()) {
      const int k = static_cast<int>(kd.kind);
      MIMO_ASSIGN_OR_RETURN(mp.mask_[k], FillGroups(mp.dense_, kd.dims, &mp.members_[k]));
      mp.group_size_[k] = mp.dense_.GroupSize(mp.mask_[k]);
    }
    // Embedding groups: per pp group, its first and last stage (tied embeddings) and its first.
    const int pp_k = static_cast<int>(GroupKind::kPp);
    const int embd_k = static_cast<int>(GroupKind::kEmbd);
    const int pos_k = static_cast<int>(GroupKind::kPosEmbd);
    mp.group_size_[embd_k] = m.pp > 1 ? 2 : 1;
    mp.group_size_[pos_k] = 1;
    mp.mask_[embd_k] = mp.mask_[pos_k] = mp.mask_[pp_k];
    for (size_t at = 0; at < mp.members_[pp_k].size(); at += m.pp) {
      mp.members_[embd_k].push_back(mp.members_[pp_k][at]);
      if (m.pp > 1) mp.members_[embd_k].push_back(mp.members_[pp_k][at + m.pp - 1]);
      mp.members_[pos_k].push_back(mp.members_[pp_k][at]);
    }
    if (m.is_language) {
      MIMO_ASSIGN_OR_RETURN(GridView expert,
                            GridView::Create({m.etp, m.ep, m.expt_dp(), m.pp},
                                             {"expt_tp", "ep", "expt_dp", "pp"}, m.rank_offset));
      mp.expert_ = std::move(expert);
      for (const KindDims& kd : ExpertKinds()) {
        const int k = static_cast<int>(kd.kind);
        MIMO_ASSIGN_OR_RETURN(mp.mask_[k], FillGroups(*mp.expert_, kd.dims, &mp.members_[k]));
        mp.group_size_[k] = mp.expert_->GroupSize(mp.mask_[k]);
      }
      // pp is shared by both views: the expert view's pp groups must be the dense view's.
      std::vector<int> expert_pp;
      MIMO_ASSIGN_OR_RETURN(const GridView::DimMask expert_pp_mask,
                            FillGroups(*mp.expert_, {"pp"}, &expert_pp));
      if (mp.expert_->GroupSize(expert_pp_mask) != mp.group_size_[pp_k] ||
          expert_pp != mp.members_[pp_k]) {
        std::vector<LayoutViolation> v = {
            {m.spec_index, "ep",
             absl::StrCat("module '", m.name, "': the expert view (expt_tp=", m.etp, ", ep=", m.ep,
                          ", expt_dp=", m.expt_dp(), ", pp=", m.pp,
                          ") has different pp groups than the dense view (tp=", m.tp, ", cp=", m.cp,
                          ", dp=", m.dp, ", pp=", m.pp, ")")}};
        if (violations != nullptr) *violations = v;
        return ViolationsToStatus(v);
      }
    }
    const int module_index = static_cast<int>(plan.modules_.size());
    const GridView& dv = mp.dense_;
    for (int r = m.rank_offset; r < m.rank_end(); ++r) {
      RankAssignment& a = plan.ranks_[r];
      a.module = module_index;
      a.dense = {dv.Coordinate(r, 0), dv.Coordinate(r, 1), dv.Coordinate(r, 2),
                 dv.Coordinate(r, 3)};
      if (mp.expert_) {
        const GridView& ev = *mp.expert_;
        a.expert = ExpertCoords{ev.Coordinate(r, 0), ev.Coordinate(r, 1), ev.Coordinate(r, 2),
                                ev.Coordinate(r, 3)};
      }
      a.seeds = ComputeRankSeeds(spec.seed, spec.data_parallel_random_init, a.dense, a.expert);
    }
    plan.modules_.push_back(std::move(mp));
  }
  return plan;
}

}  // namespace mimo::parallel
